"""Evaluating a checkpoint on a split: predictions, metrics, the report."""
