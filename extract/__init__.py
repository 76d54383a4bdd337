"""img-vmr feature extraction, in layers: core (shared by every package), media (video files), store (the HDF5
feature store), models (feature models and presets), run (the extraction run) and text (query text), and the
img-extract CLI."""

__version__ = "0.1.0"
