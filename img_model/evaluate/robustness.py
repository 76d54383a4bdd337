"""What perturbed audio did to a model (Figure 4): the mean predicted audio importance of the noisy, the missing and
the clean queries of an evaluation with img-eval's --audio-noise-fraction / --audio-missing-fraction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from extract.core.console import format_probability
from img_model.data.dataset import MomentDataset
from img_model.evaluate.evaluator import QueryPrediction


def _mean(values: np.ndarray) -> float | None:
    """The mean of the values that are numbers; None when there are none (an empty group, or a model without a
    predicted importance)."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def perturbation_summary(dataset: MomentDataset, predictions: Sequence[QueryPrediction]) -> dict[str, Any] | None:
    """The settings, how many queries were noisy / missing, and the mean importance of each group (None for an
    empty group); None when the dataset read its audio unperturbed. Predictions are in dataset order."""
    perturbation = dataset.audio_perturbation
    if perturbation is None or not perturbation.active:
        return None
    assert dataset.audio_noisy is not None and dataset.audio_missing is not None
    if [p.qid for p in predictions] != [r.qid for r in dataset.records]:
        raise ValueError("the predictions are not those of the dataset's queries, in its order")
    importance = np.array([np.nan if p.audio_importance is None else p.audio_importance for p in predictions])
    noisy, missing = dataset.audio_noisy, dataset.audio_missing
    clean = ~(noisy | missing)
    return {
        **perturbation.as_dict(),
        "noisy_queries": int(noisy.sum()),
        "missing_queries": int(missing.sum()),
        "clean_queries": int(clean.sum()),
        "mean_importance_noisy": _mean(importance[noisy]),
        "mean_importance_missing": _mean(importance[missing]),
        "mean_importance_clean": _mean(importance[clean]),
    }


def perturbation_line(summary: dict[str, Any]) -> str:
    """One line for img-eval's table output."""

    def mean(value: float | None) -> str:
        return "-" if value is None else format_probability(value)

    parts = []
    if summary["noise_fraction"] > 0:
        parts.append(
            f"audio noise (std {summary['noise_std']:g}, seed {summary['seed']}) on {summary['noisy_queries']} "
            f"queries: mean importance {mean(summary['mean_importance_noisy'])}"
        )
    if summary["missing_fraction"] > 0:
        parts.append(
            f"audio missing on {summary['missing_queries']} queries (seed {summary['seed']}): mean importance "
            f"{mean(summary['mean_importance_missing'])}"
        )
    parts.append(f"clean {summary['clean_queries']}: {mean(summary['mean_importance_clean'])}")
    return "; ".join(parts)
