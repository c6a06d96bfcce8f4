"""The report's data pipeline for the user's own data (`gemini-jax data prepare`; docs/data.md).

- sources.py: JSONL files, text files and folders -> checked records (media read into bytes)
- normalize.py, quality.py, classifier.py, safety.py, decontaminate.py: the filters
- dedup.py, hashing.py: exact and MinHash near-duplicate detection
- record_codec.py, shards.py: one example per ArrayRecord record, media embedded
- pipeline.py, report.py: the two passes, the report and the manifest

Nothing is imported here: `--help` and the reader (`data/prepared.py`) stay light.
"""
