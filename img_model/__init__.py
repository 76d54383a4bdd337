"""IMG (img_spec.md), in layers: network (the model, losses, decoding, metrics, the converter), data (queries with
their features and text), checkpoint, evaluate, train, predict, and the img-train / img-eval / img-predict CLIs."""
