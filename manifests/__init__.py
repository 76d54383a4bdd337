"""Dataset manifests: annotation files (URL + sha256), their parsers, and video splits. Arrives with issue 4."""
