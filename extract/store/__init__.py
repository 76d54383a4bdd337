"""The HDF5 feature store (extract/store/reader.py describes its layout): what most code reads and writes."""

from extract.store.parts import PART_GLOB, PARTS_SUFFIX, list_parts, parts_dir
from extract.store.reader import FeatureStore, iter_tracks, video_durations
from extract.store.records import FailureRecord, Track, VideoRecord, recipe_id
from extract.store.writer import PartWriter, StoreWriter

__all__ = [
    "PARTS_SUFFIX",
    "PART_GLOB",
    "FailureRecord",
    "FeatureStore",
    "PartWriter",
    "StoreWriter",
    "Track",
    "VideoRecord",
    "iter_tracks",
    "list_parts",
    "parts_dir",
    "recipe_id",
    "video_durations",
]
