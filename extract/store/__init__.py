"""The HDF5 feature store (extract/store/reader.py describes its layout): the types most code needs."""

from extract.store.reader import (
    PART_GLOB,
    PARTS_SUFFIX,
    FailureRecord,
    FeatureStore,
    PartWriter,
    StoreWriter,
    Track,
    VideoRecord,
    check_is_store,
    iter_tracks,
    list_parts,
    next_part_name,
    parts_dir,
    recipe_id,
    write_error,
    write_part,
)

__all__ = [
    "PARTS_SUFFIX",
    "PART_GLOB",
    "FailureRecord",
    "FeatureStore",
    "PartWriter",
    "StoreWriter",
    "Track",
    "VideoRecord",
    "check_is_store",
    "iter_tracks",
    "list_parts",
    "next_part_name",
    "parts_dir",
    "recipe_id",
    "write_error",
    "write_part",
]
