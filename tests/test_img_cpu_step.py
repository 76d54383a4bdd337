"""The two shortcuts of IMG's training step on the CPU: dropout masks drawn as `uniform >= p`
(layers._scaled_dropout_mask) and the fusion GRUs run on padded rows instead of packed ones
(MultiGranularityFusion._run), each against what it replaces."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from img_model.network import fusion
from img_model.network.fusion import MultiGranularityFusion
from img_model.network.layers import Dropout


def packed_gru(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The authors' way: pack, run, pad with zeros."""
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(gru(packed)[0], batch_first=True, total_length=x.shape[1])[0]


def outputs_and_gradients(
    run: Callable[..., torch.Tensor], gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor
) -> list[torch.Tensor]:
    """The output, then the gradients of x and of every GRU weight, for a loss that weighs every output."""
    x = x.detach().clone().requires_grad_()
    gru.zero_grad(set_to_none=True)
    out = run(gru, x, lengths)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in gru.parameters())]


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("lengths", [[9, 1, 5, 9, 3, 8], [9, 9, 9]])  # ragged; nothing padded
def test_the_padded_fusion_gru_is_the_packed_one(
    layers: int, lengths: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs and gradients equal the packed GRU's up to rounding (float64: ~1e-16), exactly 0 at padded steps,
    and the padded steps' inputs get exactly no gradient."""
    torch.manual_seed(0)
    gru = nn.GRU(6, 4, layers, batch_first=True, bidirectional=True).double()
    x = torch.randn(len(lengths), 9, 6, dtype=torch.float64)
    steps = torch.tensor(lengths)
    expected = outputs_and_gradients(packed_gru, gru, x, steps)

    def no_packing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CPU path packed the sequences")

    monkeypatch.setattr(fusion, "pack_padded_sequence", no_packing)
    got = outputs_and_gradients(MultiGranularityFusion._run, gru, x, steps)
    names = ["output", "input gradient", *(name for name, _ in gru.named_parameters())]
    for name, a, b in zip(names, got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    padded = torch.arange(9) >= steps.unsqueeze(1)
    assert torch.equal(got[0][padded], torch.zeros_like(got[0][padded]))
    assert torch.equal(got[1][padded], torch.zeros_like(got[1][padded]))


def test_the_padded_fusion_stack_in_float32_is_within_rounding_of_the_packed_one() -> None:
    """The model's own precision: the differences are float32 rounding (measured 2e-7 on the Charades stack)."""
    torch.manual_seed(0)
    gru = nn.GRU(8, 4, 3, batch_first=True, bidirectional=True)
    x, lengths = torch.randn(5, 12, 8), torch.tensor([12, 3, 7, 12, 1])
    got = outputs_and_gradients(MultiGranularityFusion._run, gru, x, lengths)
    expected = outputs_and_gradients(packed_gru, gru, x, lengths)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cpu_dropout_keeps_with_probability_one_minus_p_and_scales_the_kept() -> None:
    dropout = Dropout(0.2).train()
    x = torch.randn(200, 500, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x)
    mask = y.detach() / x.detach()
    kept = mask != 0
    assert torch.allclose(mask[kept], torch.tensor(1 / 0.8))
    assert abs(kept.float().mean().item() - 0.8) < 0.005  # 100,000 draws: 5.6 standard deviations
    y.sum().backward()
    assert torch.allclose(x.grad, mask)  # the gradient is the mask
    torch.manual_seed(3)
    assert torch.equal(dropout(x), y)  # the mask is the generator's: a seed replays it
    assert torch.equal(dropout.eval()(x), x)


def test_cpu_dropout_masks_are_uniform_draws_not_bernoulli_ones() -> None:
    """The documented random stream (docs/training.md): the mask is `torch.rand(x.shape) >= p`, scaled, so a run
    is reproducible from its seed, and not F.dropout's (runs before this change)."""
    x = torch.ones(64, 32)
    torch.manual_seed(5)
    y = Dropout(0.3).train()(x)
    torch.manual_seed(5)
    assert torch.equal(y, (torch.rand(64, 32) >= 0.3).float() / 0.7)
    torch.manual_seed(5)
    assert not torch.equal(y, F.dropout(x, 0.3, training=True))
