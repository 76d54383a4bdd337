"""Dataset manifests: the published annotation files (URL + sha256, fetched on first use), their parsers into
normalised query records, users' own JSONL queries, and the video lists img-extract reads (see registry.py)."""
