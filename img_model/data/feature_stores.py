"""Feature stores read as one source of video features for training and evaluation.

Several stores (e.g. the shards that several machines wrote) are one collection: a video held by more than one
comes from the last store, in the order given, that holds it (as for the parts of a store and for
`img-extract merge`: the later one wins). The stores are scanned once in the process that builds the dataset;
file handles are opened lazily *per process* (img_model/data/worker_handles.py); a forked DataLoader worker keeps the
scan (plain Python data) and opens its own handles, a spawn-started one receives the paths and scans again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extract.core.errors import ProvenanceMismatchError, UsageError
from extract.core.provenance import compare_recipes
from extract.store import FeatureStore, Track
from img_model.data.worker_handles import PerProcess

log = logging.getLogger(f"img_vmr.{__name__}")


class FeatureStores:
    """Read-only view of one or more feature stores: metadata, track shapes and tracks by video id."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        if not paths:
            raise UsageError("no feature store given; pass --features feats.h5 (repeatable for shards)")
        self.paths = tuple(Path(p) for p in paths)
        self._stores = PerProcess(FeatureStore, self.paths, keep_in_fork=True)
        self._where: dict[str, int] = {}
        self._recipes: dict[str, dict[str, Any]] = {}
        duplicates = 0
        for number, store in enumerate(self._stores.all()):
            for video_id in store.video_ids():
                duplicates += video_id in self._where
                self._where[video_id] = number  # the later store wins
            for part, reason in store.corrupt_parts:
                log.warning("%s: damaged part %s skipped (%s)", store.path, part.name, reason)
        if duplicates:
            log.warning("%d videos are in more than one store; each is read from the last store listing it", duplicates)

    def _holder(self, video_id: str) -> FeatureStore:
        try:
            return self._stores.get(self._where[video_id])
        except KeyError:
            raise KeyError(f"no video {video_id!r} in {', '.join(map(str, self.paths))}") from None

    # --- queries -----------------------------------------------------------------------------------------

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def video_ids(self) -> list[str]:
        return sorted(self._where)

    def metadata(self, video_id: str) -> dict[str, Any]:
        return self._holder(video_id).metadata(video_id)

    def feature_names(self, video_id: str) -> list[str]:
        return self._holder(video_id).feature_names(video_id)

    def track_shape(self, video_id: str, feature: str) -> tuple[int, ...]:
        return self._holder(video_id).track_shape(video_id, feature)

    def track(self, video_id: str, feature: str) -> Track:
        return self._holder(video_id).track(video_id, feature)

    def recipe(self, feature: str) -> dict[str, Any]:
        """The recipe of a feature kind; every store that holds it must agree (else ProvenanceMismatchError)."""
        if feature in self._recipes:
            return self._recipes[feature]
        holders = [store for store in self._stores.all() if feature in store.feature_names()]
        if not holders:
            known = sorted({name for store in self._stores.all() for name in store.feature_names()})
            stores = ", ".join(map(str, self.paths))
            raise UsageError(f"no {feature!r} features in {stores} (they hold: {', '.join(known) or 'none'})")
        recipe = holders[0].provenance(feature)
        for other in holders[1:]:
            detail = compare_recipes(recipe, other.provenance(feature)).refused
            if detail:
                raise ProvenanceMismatchError(
                    f"{holders[0].path} and {other.path} hold {feature!r} features made differently ({detail}); "
                    "they cannot be read as one dataset"
                )
        self._recipes[feature] = recipe
        return recipe

    def close(self) -> None:
        """Close this process's handles (they reopen on the next read)."""
        self._stores.close()

    def __enter__(self) -> FeatureStores:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
