"""The img-train, img-eval and img-predict commands, and the options they share."""
