"""Comparing provenance records: extract's helper (one function serves extraction, merging and training)."""

from extract.record_differences import LISTED_DIFFERENCES, differences

__all__ = ["LISTED_DIFFERENCES", "differences"]
