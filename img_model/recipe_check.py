"""Would inputs made here be made as the checkpoint's were? Compare the recipe a checkpoint recorded for a feature
(or its text encoder) with the recipe of the models loaded here, and say so in one line when they differ.

- a difference in any numeric parameter (preset, fps, windows, crop, model configuration...) is refused;
- other weights (another sha256) are refused unless the user trusts them (--trust-weights), then a warning;
- another precision (features made in bf16 on a GPU, extracted in fp32 on a CPU) is a warning: the numbers
  move by the autocast's rounding, not by a different recipe.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from img_model.errors import CheckpointMismatchError
from img_model.provenance import differences

log = logging.getLogger("img_vmr.predict")

WEIGHTS_KEYS = frozenset({"weights_sha256", "extra_weights_sha256"})
WARNED_KEYS = frozenset({"precision"})


def _subset(recipe: Mapping[str, Any], keys: Collection[str]) -> dict[str, Any]:
    return {key: recipe.get(key) for key in keys}


def _changed(recorded: Mapping[str, Any], actual: Mapping[str, Any], ignore: Collection[str]) -> list[str]:
    return sorted(key for key in (set(recorded) | set(actual)) - set(ignore) if recorded.get(key) != actual.get(key))


def recipe_accepted(
    recorded: Mapping[str, Any], actual: Mapping[str, Any], trust_weights: bool, ignore: Collection[str] = ()
) -> bool:
    """Would check_recipe accept `actual` (perhaps with warnings)? It raises for nothing."""
    changed = _changed(recorded, actual, ignore)
    return not any(key not in WEIGHTS_KEYS | WARNED_KEYS for key in changed) and (
        trust_weights or not any(key in WEIGHTS_KEYS for key in changed)
    )


def check_recipe(
    what: str,
    recorded: Mapping[str, Any],
    actual: Mapping[str, Any],
    trust_weights: bool,
    hint: str,
    ignore: Collection[str] = (),
) -> None:
    """Raise CheckpointMismatchError (one line naming the difference) or warn; `hint` says which option picks
    the right files; keys in `ignore` say where a model came from, not what it computes."""
    changed = _changed(recorded, actual, ignore)
    numeric = [key for key in changed if key not in WEIGHTS_KEYS | WARNED_KEYS]
    weights = [key for key in changed if key in WEIGHTS_KEYS]
    if numeric:
        detail = differences(_subset(recorded, numeric), _subset(actual, numeric))
        raise CheckpointMismatchError(f"{what} would be made otherwise than the checkpoint's: {detail}; {hint}")
    if weights:
        detail = differences(_subset(recorded, weights), _subset(actual, weights))
        if not trust_weights:
            raise CheckpointMismatchError(
                f"{what}: the weights found here are not the ones the checkpoint was trained on ({detail}); "
                f"{hint}, or pass --trust-weights to use them anyway"
            )
        log.warning("%s: other weights than the checkpoint's (%s), used anyway (--trust-weights)", what, detail)
    for key in (key for key in changed if key in WARNED_KEYS):
        log.warning(
            "%s: the checkpoint's were made in %s, these in %s: expect small numeric differences",
            what,
            recorded.get(key),
            actual.get(key),
        )
