"""The IMG network, losses, span decoding, metrics, trainer and evaluator (img_spec.md). Arrives with issue 5."""
