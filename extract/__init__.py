"""img-vmr feature extraction: decoding, feature models, the HDF5 feature store and the img-extract CLI."""

__version__ = "0.1.0"
