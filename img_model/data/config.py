"""Where a dataset's parts are and how they are put together (DataConfig, the [data] section of a run), and the
data flags given on a command line as its fields.

Without torch: img-train, img-eval and img-pipeline read it to parse their options and recipes, and a usage error
or --help must not wait seconds for torch to load (img_model/data/dataset.py builds the dataset it describes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from extract.core.errors import UsageError
from img_model.data.alignment import ALIGNMENT_RULES, AlignmentRule
from img_model.data.visual_tracks import visual_track_names

MissingAudio = Literal["drop", "zeros"]


@dataclass(frozen=True)
class DataConfig:
    """Where a dataset's parts are and how they are put together. Paths are strings so the config round-trips
    through TOML; `features` lists one or more feature stores read as one (shards)."""

    dataset: str = ""  # a dataset name of manifests/ (charades-sta, charades-am, activitynet) or a custom .jsonl
    features: tuple[str, ...] = ()
    visual: str = ""  # a feature name, or several joined by ',' read as one (img_model/data/visual_tracks.py)
    audio: str = ""
    text: str = ""
    data_dir: str = ""  # annotation files (empty: $IMG_DATA_DIR or the cache)
    align: AlignmentRule = "img"
    missing_audio: MissingAudio = "drop"
    strict: bool = False
    cache_features: bool = False

    def __post_init__(self) -> None:
        if self.align not in ALIGNMENT_RULES:
            raise UsageError(f"align must be one of {', '.join(ALIGNMENT_RULES)}, not {self.align!r}")
        if self.missing_audio not in ("drop", "zeros"):
            raise UsageError(f"missing_audio must be 'drop' or 'zeros', not {self.missing_audio!r}")
        if not all(isinstance(store, str) and store for store in self.features):
            raise UsageError(f"features must be a list of feature store paths, not {list(self.features)!r}")
        if self.visual:
            visual_track_names(self.visual)

    @property
    def visual_tracks(self) -> tuple[str, ...]:
        """The visual feature tracks read as one, in the order named (the first is the step grid)."""
        return visual_track_names(self.visual)


def data_overrides(**values: Any) -> dict[str, Any]:
    """The data options that were given, as DataConfig fields (absolute paths as strings, stores as a tuple)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == ():
            continue
        if name == "features":  # absolute, so that the run's config works from any folder (img-eval, --resume)
            value = tuple(str(Path(p).absolute()) for p in value)
        elif isinstance(value, Path) or (name == "dataset" and value.endswith(".jsonl")):
            value = str(Path(value).absolute())
        out[name] = value
    return out
