"""Comparing provenance: where two records differ, in one line, and the one policy for which differences of a
recipe (everything that decides the numbers of a feature, a text encoding or a model) refuse its use.

`compare_recipes` is what the store (adding features to a store), compaction and merging (parts and shards of one
feature), the engines (workers on several devices), training (resuming a run), img-eval (inputs against the
checkpoint's), img-predict (features made here against the checkpoint's) and the pipeline (a run folder's
configuration) call. Any difference refuses, with two exceptions a caller may allow:

- other weights (another sha256 of the same published file), when the user trusts them (--trust-weights): a
  warning;
- another precision (features made in bf16 on a GPU, extracted in fp32 on a CPU): a warning, the numbers move by
  autocast's rounding, not by another recipe.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from extract.core.errors import listed

LISTED_DIFFERENCES = 3
WEIGHTS_KEYS = frozenset({"weights_sha256", "extra_weights_sha256"})
PRECISION_KEYS = frozenset({"precision"})


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any], limit: int = LISTED_DIFFERENCES) -> str:
    """'key: expected -> actual, ...' for the first `limit` keys that differ (sorted), '' when none do."""
    changed = sorted(key for key in set(expected) | set(actual) if expected.get(key) != actual.get(key))
    return listed([f"{key}: {expected.get(key)!r} -> {actual.get(key)!r}" for key in changed], limit)


@dataclass(frozen=True)
class RecipeComparison:
    """What the policy makes of two recipes: `refused`, the differences that refuse the use (one line, '' when
    there are none; `weights_only` when they are only the weights' checksums, so that a caller can say how to trust
    them), and `warnings`, one line per difference it tolerates."""

    refused: str = ""
    weights_only: bool = False
    warnings: tuple[str, ...] = ()


def compare_recipes(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    *,
    trust_weights: bool = False,
    tolerate_precision: bool = False,
    ignore: Collection[str] = (),
    recorded: str = "the recorded ones",
) -> RecipeComparison:
    """`actual` against `expected` by the module's policy (`recorded` names the expected side in warnings). Keys in
    `ignore` say where something came from, not what it computes."""
    changed = sorted(key for key in (set(expected) | set(actual)) - set(ignore) if expected.get(key) != actual.get(key))
    tolerated = (WEIGHTS_KEYS if trust_weights else set()) | (PRECISION_KEYS if tolerate_precision else set())
    refused = [key for key in changed if key not in tolerated]
    if refused:
        detail = differences({k: expected.get(k) for k in refused}, {k: actual.get(k) for k in refused})
        return RecipeComparison(detail, all(key in WEIGHTS_KEYS for key in refused))
    warnings = []
    weights = [key for key in changed if key in WEIGHTS_KEYS]
    if weights:
        detail = differences({k: expected.get(k) for k in weights}, {k: actual.get(k) for k in weights})
        warnings.append(f"other weights than {recorded} ({detail}), used anyway (--trust-weights)")
    for key in (key for key in changed if key in PRECISION_KEYS):
        warnings.append(
            f"{recorded} were made in {expected.get(key)}, these in {actual.get(key)}: expect small numeric differences"
        )
    return RecipeComparison(warnings=tuple(warnings))
