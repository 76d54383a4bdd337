"""Span decoding (best span and top-k) and the conversions between step indices and seconds (img_spec.md §1.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from img_model.network.decoding import best_span, index_to_time, span_probabilities, time_to_index, top_spans
from img_model.network.layers import mask_logits


def padded_logits(seed: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(1)).float()
    start = torch.randn(len(lengths), max(lengths), generator=generator) * 3
    end = torch.randn(len(lengths), max(lengths), generator=generator) * 3
    return mask_logits(start, mask), mask_logits(end, mask)


def test_best_span_is_the_most_probable_pair_with_start_not_after_end() -> None:
    start, end = padded_logits(0, [9, 5, 1, 7])
    spans = best_span(start, end)
    for b in range(start.shape[0]):
        p_start, p_end = torch.softmax(start[b], 0), torch.softmax(end[b], 0)
        candidates = [(p_start[i] * p_end[j], i, j) for i in range(9) for j in range(i, 9)]
        score, i, j = max(candidates)
        assert (spans.start[b].item(), spans.end[b].item()) == (i, j)
        assert spans.score[b].item() == pytest.approx(score.item())


def test_best_span_never_lands_on_padding() -> None:
    start, end = padded_logits(1, [3, 8])
    spans = best_span(start, end)
    assert spans.end[0] < 3


def test_top_spans_are_distinct_sorted_and_start_with_the_best_span() -> None:
    start, end = padded_logits(2, [8, 6])
    top, best = top_spans(start, end, k=5), best_span(start, end)
    assert top.start.shape == (2, 5)
    assert (top.start <= top.end).all()
    assert (top.score[:, :-1] >= top.score[:, 1:]).all()
    pairs = {(b, s, e) for b in range(2) for s, e in zip(top.start[b].tolist(), top.end[b].tolist(), strict=True)}
    assert len(pairs) == 10
    assert torch.equal(top.start[:, 0], best.start) and torch.equal(top.end[:, 0], best.end)
    matrix = span_probabilities(start, end)
    torch.testing.assert_close(top.score, matrix[torch.arange(2).unsqueeze(1), top.start, top.end])


def test_top_spans_caps_k_at_the_number_of_spans() -> None:
    start, end = padded_logits(3, [3])
    assert top_spans(start, end, k=100).start.shape == (1, 6)


def test_top_spans_never_rank_padding_even_when_probabilities_underflow() -> None:
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    start = torch.tensor([[0.0, -200.0, -200.0, 0.0, 0.0, 0.0]]) + (1 - mask) * -1e30
    end = start.clone()
    top = top_spans(start, end, k=8)
    found = top.start[0] >= 0
    assert found.sum() == 6  # the 3 * 4 / 2 spans inside the 3 valid steps, nothing in the padding
    assert top.end[0][found].max() <= 2 and top.start[0].tolist()[:1] == [0]
    assert top.start[0][~found].tolist() == [-1, -1] and top.score[0][~found].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [((24.3, 30.4, 31, 30.96), (24, 29)), ((0.0, 6.9, 34, 33.67), (0, 6)), ((5.0, 5.2, 30, 30.0), (5, 5))],
    ids=["late", "from-zero", "short"],
)
def test_time_to_index_reproduces_the_measured_labels(
    annotation: tuple[float, float, int, float], expected: tuple[int, int]
) -> None:
    assert tuple(int(i) for i in time_to_index(*annotation)) == expected


def test_time_to_index_of_an_array_equals_one_annotation_at_a_time() -> None:
    rng = np.random.default_rng(0)
    steps = rng.integers(5, 40, size=50)
    duration = rng.uniform(10, 60, size=50)
    start = rng.uniform(0, 0.8, size=50) * duration
    end = np.minimum(start + rng.uniform(0.5, 20, size=50), duration)
    starts, ends = time_to_index(start, end, steps, duration)
    singles = [time_to_index(s, e, n, d) for s, e, n, d in zip(start, end, steps, duration, strict=True)]
    assert starts.tolist() == [int(s) for s, _ in singles] and ends.tolist() == [int(e) for _, e in singles]
    assert (starts <= ends).all() and (ends < steps).all()


def test_index_to_time_uses_the_uniform_partition_in_float32() -> None:
    start, end = index_to_time(np.array([0, 3]), np.array([0, 9]), 10, 25.0)
    assert start.dtype == np.float32
    np.testing.assert_array_equal(start, np.float32([0.0, 7.5]))
    np.testing.assert_array_equal(end, np.float32([2.5, 25.0]))


def test_time_to_index_inverts_index_to_time() -> None:
    for i, j in [(0, 0), (2, 7), (11, 11)]:
        seconds = index_to_time(i, j, 12, 37.3)
        assert tuple(int(k) for k in time_to_index(*seconds, 12, 37.3)) == (i, j)
