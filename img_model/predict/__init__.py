"""A checkpoint answering queries on video files: the predictor, its feature cache and query reading, the plot and
the demo page."""
