"""Would inputs made here be made as the checkpoint's were? The recipe a checkpoint recorded for a feature (or its
text encoder) against the recipe of the models loaded here, by the one policy (extract/core/provenance.py):
any difference refuses, except other weights the user trusts (--trust-weights) and another precision, which are
warnings.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from extract.core.provenance import compare_recipes
from img_model.checkpoint import CheckpointMismatchError

log = logging.getLogger(f"img_vmr.{__name__}")


def recipe_accepted(
    recorded: Mapping[str, Any], actual: Mapping[str, Any], trust_weights: bool, ignore: Collection[str] = ()
) -> bool:
    """Would check_recorded_recipe accept `actual` (perhaps with warnings)? It raises for nothing."""
    comparison = compare_recipes(recorded, actual, trust_weights=trust_weights, tolerate_precision=True, ignore=ignore)
    return not comparison.refused


def check_recorded_recipe(
    what: str,
    recorded: Mapping[str, Any],
    actual: Mapping[str, Any],
    trust_weights: bool,
    hint: str,
    ignore: Collection[str] = (),
) -> None:
    """Raise CheckpointMismatchError (one line naming the difference) or warn; `hint` says which option picks
    the right files; keys in `ignore` say where a model came from, not what it computes."""
    comparison = compare_recipes(
        recorded,
        actual,
        trust_weights=trust_weights,
        tolerate_precision=True,
        ignore=ignore,
        recorded="the checkpoint's",
    )
    if comparison.refused and comparison.weights_only:
        raise CheckpointMismatchError(
            f"{what}: the weights found here are not the ones the checkpoint was trained on ({comparison.refused}); "
            f"{hint}, or pass --trust-weights to use them anyway"
        )
    if comparison.refused:
        raise CheckpointMismatchError(
            f"{what} would be made otherwise than the checkpoint's: {comparison.refused}; {hint}"
        )
    for warning in comparison.warnings:
        log.warning("%s: %s", what, warning)
