"""Recipes: what one end-to-end experiment is made of, as frozen values.

A recipe names the dataset a model is trained on, the feature presets of its visual and audio tracks, the text
embedding of its queries, the training configuration (sections of `img-train --config`, over the per-dataset
defaults, which are the paper's), the datasets it is evaluated on, and the numbers the paper reports there.
`img-pipeline RECIPE` runs it (pipelines/pipeline_stages.py). The three published settings are built in; a JSONL file
of your own queries is a recipe too (`custom_recipe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from extract.core.errors import UsageError
from extract.models.presets import get_preset

METRICS = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")


@dataclass(frozen=True)
class PaperResult:
    """What the paper reports for IMG in one setting (img_spec.md §6): R1@{0.3,0.5,0.7} and mIoU, percent."""

    source: str  # e.g. "Table 5"
    values: tuple[float, float, float, float]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    dataset: str  # trained on: a dataset of manifests/ or a custom .jsonl file
    visual: str  # feature presets (extract/models/presets.py)
    audio: str
    text: str = "glove"  # glove (GloVe file from --glove), bert[:MODEL] or clip-text[:MODEL]
    evaluate_on: tuple[str, ...] = ()  # datasets whose test split the trained model is evaluated on
    training: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # img-train --config sections
    paper: Mapping[str, PaperResult] = field(default_factory=dict)  # evaluated dataset -> published numbers

    def __post_init__(self) -> None:
        for preset in (self.visual, self.audio):
            get_preset(preset)  # UsageError naming the known presets
        kind = self.text.partition(":")[0]
        if kind not in ("glove", "bert", "clip-text"):
            raise UsageError(f"text embedding {self.text!r}: use glove, bert[:MODEL] or clip-text[:MODEL]")
        if not self.evaluate_on:
            object.__setattr__(self, "evaluate_on", (self.dataset,))

    @property
    def is_custom(self) -> bool:
        return self.dataset.endswith(".jsonl")


CHARADES_I3D, CHARADES_AUDIO = "i3d-charades-vslnet", "panns"

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "charades-sta",
            "Charades-STA with I3D (VSLNet's Charades features) + PANNs + GloVe 840B",
            "charades-sta",
            CHARADES_I3D,
            CHARADES_AUDIO,
            paper={"charades-sta": PaperResult("Table 5", (75.18, 61.85, 44.23, 55.62))},
        ),
        Recipe(
            "charades-am",
            "Charades-AudioMatter: trained on Charades-STA train, tested on the 1,196 AudioMatter queries",
            "charades-am",
            CHARADES_I3D,
            CHARADES_AUDIO,
            paper={"charades-am": PaperResult("Table 7", (82.74, 71.93, 54.27, 62.76))},
        ),
        Recipe(
            "activitynet",
            "ActivityNet Captions with I3D (VSLNet's ActivityNet features) + quantised VGGish + GloVe 840B",
            "activitynet",
            "i3d-anet-vslnet",
            "vggish-quantized",
            paper={"activitynet": PaperResult("Table 5", (61.50, 45.06, 29.47, 45.19))},
        ),
    )
}

# Presets of a custom recipe unless --visual / --audio say otherwise: the Charades setting's.
CUSTOM_VISUAL, CUSTOM_AUDIO = CHARADES_I3D, CHARADES_AUDIO


def custom_recipe(
    annotations: Path, visual: str | None = None, audio: str | None = None, text: str | None = None
) -> Recipe:
    """A recipe for your own queries: a JSONL file with train and test splits (manifests/custom.py)."""
    if not annotations.is_file():
        raise UsageError(f"{annotations} does not exist; give a recipe name ({', '.join(RECIPES)}) or your .jsonl")
    path = str(annotations.resolve())
    return Recipe(
        annotations.stem,
        f"your queries in {annotations}",
        path,
        visual or CUSTOM_VISUAL,
        audio or CUSTOM_AUDIO,
        text or "glove",
    )


def get_recipe(name: str, visual: str | None = None, audio: str | None = None, text: str | None = None) -> Recipe:
    """A built-in recipe by name (its presets or text embedding replaced when given), or a custom one from a
    .jsonl file."""
    if name.endswith(".jsonl"):
        return custom_recipe(Path(name), visual, audio, text)
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; use one of {', '.join(RECIPES)} or a .jsonl file of your queries")
    recipe = RECIPES[name]
    changed = {key: value for key, value in (("visual", visual), ("audio", audio), ("text", text)) if value}
    if not changed:
        return recipe
    return replace(recipe, paper={}, **changed)  # other inputs: the paper's numbers no longer apply
