"""The IMG network (img_spec.md): its configuration, modules, losses, span decoding, metrics, optimiser, and the
converter of the authors' checkpoints."""
