"""The img-extract command: one module per command group, and the options they share."""
