"""SlowFast R50 8x8 (Kinetics-400), the network of Moment-DETR's and HERO's 2304-d SlowFast features.

Written from the facts of PySlowFast's `SLOWFAST_8x8_R50` configuration as HERO_Video_Feature_Extractor runs it
(slowfast/configs/Kinetics/c2/extract_SLOWFAST_8x8_R50.yaml, slowfast/models/video_model_builder.py);
tests/test_golden_slowfast.py checks it against outputs of that code (tests/data/golden/slowfast).

Two pathways over one clip of 32 frames: the Slow pathway sees every 4th frame (alpha = 4) with 64-channel stems,
the Fast pathway all 32 frames with 1/8 of the channels (beta = 1/8). After the stem and after res2, res3 and
res4 a strided temporal convolution ("lateral") maps the Fast features onto the Slow frame rate and they are
concatenated to the Slow features. Each res stage is ResNet-50's bottleneck blocks (3, 4, 6, 3), with temporal
kernels only where the recipe has them (Slow: res4, res5; Fast: everywhere). BatchNorm eps is 1e-5.

The feature is the concatenation of the Slow (2048) and Fast (256) res5 maps averaged over time and space, the
input of the Kinetics classifier. At HERO's input (32 x 224 x 224) the reference's fixed-size average pool
(8 x 7 x 7 and 32 x 7 x 7) covers exactly the whole map, so averaging the whole map is the same number.

The published file, PySlowFast's model-zoo `SLOWFAST_8x8_R50.pkl`, is a Caffe2 pickle `{"blobs": {name: array}}`
that also holds optimizer state (`*_momentum`, `lr`, `model_iter`). `BLOB_TABLE` is the one place where its
blob names appear: it maps each blob onto this module's state-dict key, tensors unchanged.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from extract.core.array_pickle import unpickle_arrays
from extract.core.errors import MissingWeightsError
from extract.core.torch_files import misfit_message

Triple = tuple[int, int, int]

# HERO's Normalize on x / 255 (extract_feature/extract.py): (x - mean) / (std + 1e-8), in float32, where the
# 1e-8 moves 0.225 up by one float32 step.
MEAN = 0.45
STD = 0.225
STD_EPSILON = 1e-8


@dataclass(frozen=True)
class SlowFastConfig:
    """SLOWFAST_8x8_R50: the numbers that shape the network (PySlowFast config names in the comments)."""

    stage_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)  # RESNET.DEPTH 50: bottlenecks in res2..res5
    width: int = 64  # RESNET.WIDTH_PER_GROUP: Slow stem channels; stage widths are 4x, 8x, 16x, 32x of it
    fast_divisor: int = 8  # SLOWFAST.BETA_INV: Fast channels = Slow channels / 8
    alpha: int = 4  # SLOWFAST.ALPHA: Fast frames per Slow frame
    lateral_ratio: int = 2  # SLOWFAST.FUSION_CONV_CHANNEL_RATIO: lateral output = 2 x Fast channels
    lateral_kernel: int = 7  # SLOWFAST.FUSION_KERNEL_SZ: temporal kernel of the laterals
    # Temporal kernel of the stem and of each block's first convolution in res2..res5, per pathway.
    slow_temporal: tuple[int, ...] = (1, 1, 1, 3, 3)
    fast_temporal: tuple[int, ...] = (5, 3, 3, 3, 3)
    spatial_strides: tuple[int, int, int, int] = (1, 2, 2, 2)  # of each stage's first block (in its 3x3 conv)
    num_classes: int = 400

    @property
    def feature_dim(self) -> int:
        return self.width * 32 + self.width * 32 // self.fast_divisor


class ConvBn(nn.Module):
    """Bias-free Conv3d -> BatchNorm3d(eps=1e-5); the caller applies the ReLU where the network has one."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple, stride: Triple = (1, 1, 1)):
        super().__init__()
        padding = tuple(k // 2 for k in kernel)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, padding, bias=False)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Stem(nn.Module):
    """T x 7 x 7 convolution with spatial stride 2, ReLU, then a 1 x 3 x 3 max-pool with spatial stride 2."""

    def __init__(self, out_channels: int, temporal_kernel: int):
        super().__init__()
        self.conv_bn = ConvBn(3, out_channels, (temporal_kernel, 7, 7), (1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(F.relu(self.conv_bn(x)), (1, 3, 3), (1, 2, 2), (0, 1, 1))


class Bottleneck(nn.Module):
    """T x 1 x 1 reduce -> 1 x 3 x 3 (carries the stride) -> 1 x 1 x 1 expand, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, inner: int, temporal_kernel: int, stride: int):
        super().__init__()
        self.reduce = ConvBn(in_channels, inner, (temporal_kernel, 1, 1))
        self.spatial = ConvBn(inner, inner, (1, 3, 3), (1, stride, stride))
        self.expand = ConvBn(inner, out_channels, (1, 1, 1))
        projects = in_channels != out_channels or stride != 1
        self.shortcut = ConvBn(in_channels, out_channels, (1, 1, 1), (1, stride, stride)) if projects else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.expand(F.relu(self.spatial(F.relu(self.reduce(x)))))
        return F.relu(branch + (x if self.shortcut is None else self.shortcut(x)))


class Lateral(nn.Module):
    """Fast -> Slow: a 7 x 1 x 1 convolution with temporal stride alpha, BatchNorm, ReLU."""

    def __init__(self, fast_channels: int, config: SlowFastConfig):
        super().__init__()
        kernel = (config.lateral_kernel, 1, 1)
        self.conv_bn = ConvBn(fast_channels, fast_channels * config.lateral_ratio, kernel, (config.alpha, 1, 1))

    def forward(self, fast: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv_bn(fast))


class Pathway(nn.Module):
    """One pathway: stem, then res2..res5 as sequences of bottlenecks.

    `extra_inputs[i]` are the channels the laterals add to stage i's input (0 for the Fast pathway).
    """

    def __init__(self, width: int, temporal: tuple[int, ...], extra_inputs: tuple[int, ...], config: SlowFastConfig):
        super().__init__()
        self.stem = Stem(width, temporal[0])
        in_channels = width
        for index, blocks in enumerate(config.stage_blocks):
            out_channels, inner, kernel = width * 4 * 2**index, width * 2**index, temporal[index + 1]
            stride = config.spatial_strides[index]
            first = Bottleneck(in_channels + extra_inputs[index], out_channels, inner, kernel, stride)
            rest = [Bottleneck(out_channels, out_channels, inner, kernel, 1) for _ in range(blocks - 1)]
            setattr(self, f"res{index + 2}", nn.Sequential(first, *rest))
            in_channels = out_channels

    def stage(self, name: str) -> nn.Module:
        """The stem or a res stage by name ("stem", "res2", ...)."""
        return getattr(self, name)


STAGES = ("res2", "res3", "res4", "res5")


class SlowFastR50(nn.Module):
    """SlowFast R50 up to the 2304-d pooled feature, and the Kinetics classifier on top of it."""

    def __init__(self, config: SlowFastConfig | None = None):
        super().__init__()
        self.config = config = config or SlowFastConfig()
        fast_width = config.width // config.fast_divisor
        # Fast channels after the stem, res2, res3 and res4: what the four laterals read
        fast_channels = (fast_width, *(fast_width * 4 * 2**i for i in range(3)))
        lateral_channels = tuple(channels * config.lateral_ratio for channels in fast_channels)
        self.slow = Pathway(config.width, config.slow_temporal, lateral_channels, config)
        self.fast = Pathway(fast_width, config.fast_temporal, (0, 0, 0, 0), config)
        # fuse[name]: the lateral after the stem / res2 / res3 / res4 (none after res5)
        self.fuse = nn.ModuleDict(
            {
                name: Lateral(channels, config)
                for name, channels in zip(("stem", *STAGES[:3]), fast_channels, strict=True)
            }
        )
        self.classifier = nn.Linear(config.feature_dim, config.num_classes)

    def pathways(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised clips (N, 3, T, H, W) -> (slow, fast): the Slow pathway takes T // alpha frames at
        linspace(0, T - 1) truncated to integers, as HERO's pack_pathway_output does; the Fast one takes all."""
        frames = clips.shape[2]
        index = torch.linspace(0, frames - 1, frames // self.config.alpha).long().to(clips.device)
        return clips.index_select(2, index), clips

    def iter_stages(self, clips: torch.Tensor) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """Yield (name, slow, fast) after the stem and each stage, and after each lateral ("stem_fused", ...)."""
        slow, fast = self.pathways(clips)
        for name in ("stem", *STAGES):
            slow, fast = self.slow.stage(name)(slow), self.fast.stage(name)(fast)
            yield name, slow, fast
            if name in self.fuse:
                slow = torch.cat([slow, self.fuse[name](fast)], dim=1)
                yield f"{name}_fused", slow, fast

    def extract_features(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) normalised clips -> (N, 2304): Slow then Fast res5 maps averaged over (T, H, W)."""
        _, slow, fast = deque(self.iter_stages(clips), maxlen=1)[0]  # holds one stage's maps at a time
        return torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Kinetics-400 class probabilities (N, 400), as the reference head gives them in eval mode."""
        return torch.softmax(self.classifier(self.extract_features(clips)), dim=1)


def normalize_clips(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB clips (N, T, H, W, 3) -> float32 (N, 3, T, H, W): x / 255, minus 0.45, over 0.225 + 1e-8."""
    x = frames.float().permute(0, 4, 1, 2, 3) / 255.0
    std = torch.tensor(STD, dtype=torch.float32) + STD_EPSILON  # in float32, as the reference adds it
    return (x - MEAN) / std.to(x.device)


# --- the published checkpoint ---------------------------------------------------------------------------------


def _conv_bn_rows(config: SlowFastConfig) -> list[tuple[str, str, str]]:
    """(conv blob, BatchNorm blob prefix, our ConvBn module) for every ConvBn of the network.

    Caffe2 names: the Slow pathway has no prefix, the Fast one `t_`; `resS_B_branch2{a,b,c}` are block B's three
    convolutions, `resS_0_branch1` its shortcut; the laterals are named after the Fast blob they read.
    """
    rows = []
    for pathway, prefix in (("slow", ""), ("fast", "t_")):
        rows.append((f"{prefix}conv1", f"{prefix}res_conv1_bn", f"{pathway}.stem.conv_bn"))
        for stage, blocks in zip(STAGES, config.stage_blocks, strict=True):
            for block in range(blocks):
                blob, ours = f"{prefix}{stage}_{block}_branch", f"{pathway}.{stage}.{block}"
                if block == 0:
                    rows.append((f"{blob}1", f"{blob}1_bn", f"{ours}.shortcut"))
                for part, module in zip("abc", ("reduce", "spatial", "expand"), strict=True):
                    rows.append((f"{blob}2{part}", f"{blob}2{part}_bn", f"{ours}.{module}"))
    rows.append(("t_pool1_subsample", "t_pool1_subsample_bn", "fuse.stem.conv_bn"))
    for stage, blocks in zip(STAGES[:3], config.stage_blocks, strict=False):
        blob = f"t_{stage}_{blocks - 1}_branch2c_bn_subsample"
        rows.append((blob, f"{blob}_bn", f"fuse.{stage}.conv_bn"))
    return rows


def blob_table(config: SlowFastConfig | None = None) -> dict[str, str]:
    """Caffe2 blob name -> our state-dict key, for every tensor of the network."""
    table = {}
    for conv, bn, ours in _conv_bn_rows(config or SlowFastConfig()):
        table[f"{conv}_w"] = f"{ours}.conv.weight"
        for suffix, key in (("s", "weight"), ("b", "bias"), ("rm", "running_mean"), ("riv", "running_var")):
            table[f"{bn}_{suffix}"] = f"{ours}.bn.{key}"  # riv is loaded as the running variance (PySlowFast)
    table.update({"pred_w": "classifier.weight", "pred_b": "classifier.bias"})
    return table


BLOB_TABLE = blob_table()
# Training state the file also holds; PySlowFast's loader skips these names too.
OPTIMIZER_BLOB_MARKERS = ("momentum", "lr", "model_iter")


def read_caffe2_blobs(path: str | Path) -> dict[str, np.ndarray]:
    """The `blobs` dict of a Caffe2 pickle, read with the arrays-only unpickler (Python 2 strings as latin-1)."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path} does not exist")
    try:
        data = unpickle_arrays(path, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0].rstrip(",.")
        raise MissingWeightsError(
            f"{path} could not be read as a Caffe2 pickle ({reason}); if it is truncated or corrupt, download it again"
        ) from None
    blobs = data.get("blobs") if isinstance(data, dict) else None
    if not isinstance(blobs, dict):
        raise MissingWeightsError(f"{path} is not a Caffe2 checkpoint: it holds no dict named 'blobs'")
    return {str(name): value for name, value in blobs.items()}


def state_dict_from_blobs(blobs: Mapping[str, object], source: str) -> dict[str, torch.Tensor]:
    """Our state dict from the checkpoint's blobs, through `BLOB_TABLE`; optimizer blobs are skipped.

    Raises `MissingWeightsError` (one line, blob names) when a tensor is missing, has another shape than the
    network's, or an unknown blob is present.
    """
    expected = SlowFastR50().state_dict()
    missing = [blob for blob in BLOB_TABLE if blob not in blobs]
    unexpected = [
        name for name in blobs if name not in BLOB_TABLE and not any(m in name for m in OPTIMIZER_BLOB_MARKERS)
    ]
    wrong_shape, state = [], {}
    for blob, key in BLOB_TABLE.items():
        value = blobs.get(blob)
        if value is None:
            continue
        if not isinstance(value, np.ndarray) or value.shape != tuple(expected[key].shape):
            shape = tuple(value.shape) if isinstance(value, np.ndarray) else type(value).__name__
            wrong_shape.append(f"{blob} {shape} where the network has {tuple(expected[key].shape)}")
            continue
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    misfit = misfit_message(source, "SlowFast R50 8x8", missing, unexpected, wrong_shape)
    if misfit:
        raise MissingWeightsError(misfit)
    return state


def load_slowfast_checkpoint(path_or_blobs: str | Path | Mapping[str, object]) -> SlowFastR50:
    """A `SlowFastR50` in eval mode with the published Caffe2 checkpoint (a file, or its blobs) loaded strictly."""
    if isinstance(path_or_blobs, Mapping):
        blobs, source = path_or_blobs, "the given blobs"
    else:
        blobs, source = read_caffe2_blobs(path_or_blobs), str(path_or_blobs)
    model = SlowFastR50()
    # A plain dict carries no version metadata, so BatchNorm fills the num_batches_tracked counters Caffe2 lacks.
    model.load_state_dict(state_dict_from_blobs(blobs, source), strict=True)
    return model.eval()
