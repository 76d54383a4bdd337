"""Moment-retrieval metrics against hand-computed cases (img_spec.md §5)."""

from __future__ import annotations

import numpy as np
import pytest

from img_model.network.metrics import recall_at, retrieval_metrics, temporal_iou


@pytest.mark.parametrize(
    ("pred", "true", "expected"),
    [
        ((0.0, 5.0), (5.0, 10.0), 0.0),  # touching: no overlap
        ((2.0, 4.0), (0.0, 10.0), 0.2),  # nested: 2 / 10
        ((0.0, 10.0), (2.0, 4.0), 0.2),  # nested the other way
        ((0.0, 2.0), (7.0, 9.0), 0.0),  # disjoint: clipped at 0, never negative
        ((1.0, 4.0), (2.0, 6.0), 0.4),  # partial: [2, 4] / [1, 6]
        ((3.0, 3.0), (0.0, 10.0), 0.0),  # zero-length inside: no length in common
        ((3.0, 3.0), (3.0, 3.0), 1.0),  # the same instant
        ((3.0, 3.0), (4.0, 4.0), 0.0),  # two different instants
        ((2.5, 7.5), (2.5, 7.5), 1.0),
    ],
    ids=[
        "touching",
        "nested",
        "nested-reverse",
        "disjoint",
        "partial",
        "zero-inside",
        "same-instant",
        "two-instants",
        "equal",
    ],
)
def test_temporal_iou_of_hand_computed_cases(pred: tuple, true: tuple, expected: float) -> None:
    assert float(temporal_iou(*pred, *true)) == pytest.approx(expected)


def test_temporal_iou_treats_missing_spans_as_zero() -> None:
    assert temporal_iou(np.nan, np.nan, 0.0, 1.0) == 0.0


def test_recall_counts_iou_at_the_threshold_as_a_hit() -> None:
    ious = np.array([0.3, 0.29999, 0.5, 0.7, 0.71])
    assert recall_at(ious, 0.3) == pytest.approx(80.0)
    assert recall_at(ious, 0.5) == pytest.approx(60.0)
    assert recall_at(ious, 0.7) == pytest.approx(40.0)


def test_retrieval_metrics_from_ranked_spans() -> None:
    # Three queries with their five ranked spans' IoUs; the best span is the first.
    ious = np.array(
        [
            [0.8, 0.1, 0.0, 0.0, 0.0],
            [0.2, 0.6, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.35],
        ]
    )
    metrics = retrieval_metrics(ious[:, 0], top_ious=ious)
    assert metrics["R1@0.3"] == pytest.approx(100 / 3)
    assert metrics["R1@0.7"] == pytest.approx(100 / 3)
    assert metrics["mIoU"] == pytest.approx(100 * 1.0 / 3)
    assert metrics["R5-noNMS@0.3"] == pytest.approx(100.0)
    assert metrics["R5-noNMS@0.5"] == pytest.approx(200 / 3)
    assert metrics["R5-noNMS@0.7"] == pytest.approx(100 / 3)


def test_retrieval_metrics_without_ranked_spans_report_r1_and_miou_only() -> None:
    assert set(retrieval_metrics(np.array([0.5, 0.9]))) == {"R1@0.3", "R1@0.5", "R1@0.7", "mIoU"}
