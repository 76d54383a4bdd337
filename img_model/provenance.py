"""Comparing provenance records: extract's helper (one function serves extraction, merging and training)."""

from extract.core.provenance import LISTED_DIFFERENCES, differences

__all__ = ["LISTED_DIFFERENCES", "differences"]
