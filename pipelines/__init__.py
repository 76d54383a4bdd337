"""End-to-end recipes (dataset + feature preset + training config) and their execution engines."""
