"""Corpus builders: the embedded demo (easy-VQA, synthesized speech, rendered shapes and clips,
standard-library code) and the long-context sets (key-value retrieval, long text windows)."""
