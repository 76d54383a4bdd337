"""Several stored visual tracks read as one visual input: `--visual clip,slowfast` (Table 6's CLIP+SF, 512 + 2304 =
2816-d per step).

- Order: the rows of the named tracks are concatenated in the order named (`clip,slowfast` gives CLIP's 512 columns
  first). The authors' loader puts SlowFast first ([SF ; CLIP], img_spec.md §2.2 step 3), as Moment-DETR's does
  (its v_feat_dirs list slowfast before clip): a converted authors' checkpoint reads `slowfast,clip`.
- Steps: the first named track is the grid. Its rows are pooled to at most max_pos_len steps as a single visual
  track is, its length is the one labels and decoding count, and every other named track (and the audio) is put
  on its steps by the `--align` rule (img_model/data/alignment.py): `img`, the authors' index rescale (their
  SlowFast rescaled to the pooled CLIP length), or `time`, the mean of the rows overlapping each step in seconds.
  Moment-DETR-style features need neither to be exact: both tracks have one row per 2-s clip (QVHighlights; the
  Charades-STA features of CG-DETR's and lighthouse's scripts use 1-s clips), and Moment-DETR cuts both to the
  shorter length.
- A video that lacks one of the named tracks is left out, with its queries listed in one line (the datasets'
  coverage), never a crash.
- Provenance: the checkpoint records the combination (each track's name, width and recipe) and one combined
  recipe, which img-eval compares with the one policy, so another combination, order or recipe is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from extract.core.errors import UsageError

SEPARATOR = ","


def visual_track_names(visual: str) -> tuple[str, ...]:
    """The track names of a --visual value: one feature name, or several joined by ','."""
    names = tuple(name.strip() for name in visual.split(SEPARATOR))
    if not all(names):
        raise UsageError(f"--visual {visual!r}: name feature tracks separated by ',', e.g. clip,slowfast")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--visual {visual!r}: {', '.join(repeated)} is named more than once")
    return names


def combined_recipe(recipes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One recipe for the visual tracks read as one: a single track's own recipe (what checkpoints of one track
    have always recorded), or, for several, track k's keys prefixed `track k.` and `tracks`, their count, so that
    the one comparison policy (extract/core/provenance.py) sees any other combination, order or recipe."""
    if len(recipes) == 1:
        return dict(recipes[0])
    combined: dict[str, Any] = {"tracks": len(recipes)}
    for number, recipe in enumerate(recipes, 1):
        combined.update({f"track {number}.{key}": value for key, value in recipe.items()})
    return combined


def _described(tracks: Sequence[Mapping[str, Any]]) -> str:
    return " + ".join(f"{track['name']} ({track['dim']}-d)" for track in tracks)


def recorded_tracks(visual: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tracks of a recorded visual provenance ({name, dim, recipe[, tracks]}): one entry per track."""
    if "tracks" in visual:
        return [dict(track) for track in visual["tracks"]]
    return [{"name": visual["name"], "dim": visual["dim"], "recipe": visual["recipe"]}]


def combination_mismatch(recorded: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
    """'' when two visual provenances combine the same kinds of track (by preset and width) in the same order, or
    are one track each (the recipe comparison says how they differ), else one line saying both combinations."""

    def kinds(tracks: Sequence[Mapping[str, Any]]) -> list[tuple[Any, Any]]:
        return [(track["recipe"].get("preset"), track["dim"]) for track in tracks]

    expected, given = recorded_tracks(recorded), recorded_tracks(actual)
    if len(expected) == len(given) == 1 or kinds(expected) == kinds(given):  # one track: its recipe says the rest
        return ""
    return (
        f"the checkpoint reads the visual tracks {_described(expected)} concatenated in that order; "
        f"--visual {actual['name']} gives {_described(given)}"
    )
