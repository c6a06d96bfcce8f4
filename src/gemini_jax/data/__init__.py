"""Data: tokenizer, media preprocessing, example encoding and the grain input pipeline."""
