"""PANNs Cnn14 (Kong et al. 2020, AudioSet tagging) with its STFT / log-mel front end, for 32 kHz mono audio.

The network follows `Cnn14` of qiuqiangkong/audioset_tagging_cnn (`pytorch/models.py`, commit d2f4b8c) in eval
mode, and its front end follows torchlibrosa 0.1.0 (DFT as a strided conv, librosa's Slaney mel matrix). The
learned parameters and buffers carry exactly the names of the published `Cnn14_mAP=0.431.pth` model dict, so
that file loads unchanged. The published dict also stores the three front-end tensors; they are deterministic,
so this module computes them itself (non-persistent buffers) and `load_cnn14_checkpoint` only checks that the
file's copies agree with ours. tests/test_golden_panns.py checks every stage against the original code
(its golden vectors), the whole chain through the product's decoding and windowing (extract/models/windows.py).

Inference only: SpecAugment, mixup and the dropouts of the original are inactive in eval mode and are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from extract.core.errors import MissingWeightsError
from extract.models.weights import build_loaded, read_weights_file

# Slaney's mel scale as librosa implements it: linear below 1 kHz, logarithmic above.
_MEL_HZ_PER_MEL = 200.0 / 3
_MEL_LOG_START_HZ = 1000.0
_MEL_LOG_START_MEL = _MEL_LOG_START_HZ / _MEL_HZ_PER_MEL
_MEL_LOG_STEP = math.log(6.4) / 27.0

_LOG_FLOOR = 1e-10  # power floor before 10·log10 (torchlibrosa's amin); ref = 1.0 and no top_db clipping
_POOLED_BLOCKS = 5  # conv blocks 1-5 halve time and mel; block 6 does not pool
# Relative max |Δ| above which a checkpoint's front-end tensor counts as a different front end. The published
# tensors (librosa 0.6.3 / torchlibrosa 0.0.4) agree with ours to float32 rounding; a different sample rate,
# window or mel range changes them by O(1).
_FRONT_END_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Cnn14Config:
    """Defaults are the configuration of `Cnn14_mAP=0.431.pth` (and of `panns_inference`)."""

    sample_rate: int = 32000
    window_size: int = 1024  # n_fft = window length (periodic Hann)
    hop_size: int = 320
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 14000.0
    classes_num: int = 527

    def describe(self) -> str:
        return (
            f"Cnn14 at {self.sample_rate} Hz (window {self.window_size}, hop {self.hop_size}, "
            f"{self.mel_bins} mel bins {self.fmin:g}-{self.fmax:g} Hz)"
        )

    @property
    def min_samples(self) -> int:
        """Shortest waveform the network accepts: five 2×2 pools need at least 2**5 STFT frames."""
        return max((2**_POOLED_BLOCKS - 1) * self.hop_size, self.window_size // 2 + 1)


class Cnn14Output(NamedTuple):
    embedding: torch.Tensor  # (N, 2048): ReLU(fc1(·)), the PANNs feature
    clipwise_output: torch.Tensor  # (N, classes_num): sigmoid AudioSet probabilities


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MEL_LOG_START_MEL + np.log(np.maximum(hz, _MEL_LOG_START_HZ) / _MEL_LOG_START_HZ) / _MEL_LOG_STEP
    return np.where(hz >= _MEL_LOG_START_HZ, log_part, hz / _MEL_HZ_PER_MEL)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _MEL_LOG_START_HZ * np.exp(_MEL_LOG_STEP * (np.maximum(mel, _MEL_LOG_START_MEL) - _MEL_LOG_START_MEL))
    return np.where(mel >= _MEL_LOG_START_MEL, log_part, _MEL_HZ_PER_MEL * mel)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, mel_bins: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_fft//2 + 1, mel_bins) float64 triangles on Slaney's mel scale with Slaney area normalisation.

    This is `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax).T` with librosa's defaults (htk=False,
    norm="slaney"), the matrix torchlibrosa's `LogmelFilterBank` multiplies the power spectrogram by.
    """
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), mel_bins + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles * area_norm[:, None]).T


def dft_kernels(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary DFT rows times a periodic Hann window, each (n_fft//2 + 1, n_fft) float64.

    real[k, n] = w[n]·cos(2πkn/N) and imag[k, n] = −w[n]·sin(2πkn/N), with w[n] = 0.5 − 0.5·cos(2πn/N).
    """
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    # k·n mod N keeps the angle in [0, 2π) so it loses no precision for large k·n.
    angle = 2 * np.pi * (np.outer(np.arange(n_fft // 2 + 1), n) % n_fft) / n_fft
    return window * np.cos(angle), -window * np.sin(angle)


class LogMelFrontEnd(nn.Module):
    """Waveform → power spectrogram → log-mel in dB, as torchlibrosa's Spectrogram + LogmelFilterBank.

    STFT: reflect padding of n_fft/2 on both sides, periodic Hann window, 1 + len // hop frames; the DFT is a
    strided conv with the kernels of `dft_kernels`, computed in float64 and used in float32. Everything is
    deterministic, so nothing here is a learned parameter or appears in the state dict.
    """

    def __init__(self, config: Cnn14Config) -> None:
        super().__init__()
        self.config = config
        real, imag = dft_kernels(config.window_size)
        kernel = torch.from_numpy(np.concatenate([real, imag])[:, None, :]).float()
        filterbank = slaney_mel_filterbank(
            config.sample_rate, config.window_size, config.mel_bins, config.fmin, config.fmax
        )
        self.register_buffer("dft_kernel", kernel, persistent=False)  # (2·freq_bins, 1, n_fft): real rows, imag rows
        self.register_buffer("mel_filterbank", torch.from_numpy(filterbank).float(), persistent=False)

    @property
    def freq_bins(self) -> int:
        return self.config.window_size // 2 + 1

    def published_tensors(self) -> dict[str, torch.Tensor]:
        """Our front end under the names and layouts the published checkpoint stores it with."""
        real, imag = self.dft_kernel.split(self.freq_bins)
        return {
            "spectrogram_extractor.stft.conv_real.weight": real,
            "spectrogram_extractor.stft.conv_imag.weight": imag,
            "logmel_extractor.melW": self.mel_filterbank,
        }

    def power_spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """(N, samples) → (N, 1, frames, n_fft//2 + 1) power, real² + imag²."""
        # float32 even under autocast: the power of a loud tone (up to (n_fft/2)²) overflows float16.
        with torch.autocast(waveform.device.type, enabled=False):
            padded = F.pad(
                waveform.to(self.dft_kernel.dtype)[:, None, :], (self.config.window_size // 2,) * 2, "reflect"
            )
            real, imag = F.conv1d(padded, self.dft_kernel, stride=self.config.hop_size).split(self.freq_bins, dim=1)
            return (real**2 + imag**2).transpose(1, 2)[:, None]

    def log_mel(self, power: torch.Tensor) -> torch.Tensor:
        """(N, 1, frames, freq_bins) power → (N, 1, frames, mel_bins) 10·log10(max(mel, 1e-10)) dB."""
        with torch.autocast(power.device.type, enabled=False):
            return 10.0 * torch.log10((power.float() @ self.mel_filterbank).clamp_min(_LOG_FLOOR))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.log_mel(self.power_spectrogram(waveform))


class ConvBlock(nn.Module):
    """(conv3×3 → BN → ReLU) × 2, then 2×2 average pooling unless `pool` is 1."""

    def __init__(self, in_channels: int, out_channels: int, pool: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, self.pool) if self.pool > 1 else x


class Cnn14(nn.Module):
    """PANNs Cnn14: a batch of mono waveforms at `config.sample_rate` → 2048-d embeddings and class probabilities.

    The state dict holds exactly the published learned entries (bn0, conv_block1..6, fc1, fc_audioset).
    """

    def __init__(self, config: Cnn14Config | None = None) -> None:
        super().__init__()
        self.config = config or Cnn14Config()
        self.front_end = LogMelFrontEnd(self.config)
        self.bn0 = nn.BatchNorm2d(self.config.mel_bins)
        channels = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(1, len(channels)):
            pool = 2 if i <= _POOLED_BLOCKS else 1
            self.add_module(f"conv_block{i}", ConvBlock(channels[i - 1], channels[i], pool))
        self.fc1 = nn.Linear(channels[-1], channels[-1])
        self.fc_audioset = nn.Linear(channels[-1], self.config.classes_num)

    def conv_blocks(self) -> list[ConvBlock]:
        return [getattr(self, f"conv_block{i}") for i in range(1, _POOLED_BLOCKS + 2)]

    def forward(self, waveform: torch.Tensor) -> Cnn14Output:
        """`waveform`: (N, samples) float, at least `config.min_samples` long. Use eval mode."""
        if waveform.ndim != 2 or waveform.shape[1] < self.config.min_samples:
            raise ValueError(
                f"Cnn14 needs waveforms shaped (N, samples) with samples >= {self.config.min_samples}, "
                f"got {tuple(waveform.shape)}"
            )
        return self.classify_log_mel(self.front_end(waveform))

    def classify_log_mel(self, log_mel: torch.Tensor) -> Cnn14Output:
        """(N, 1, frames, mel_bins) log-mel in dB (before bn0) → embedding and clipwise output."""
        # bn0 normalises each mel bin: put the mel axis on the channel axis and back.
        x = self.bn0(log_mel.transpose(1, 3)).transpose(1, 3)
        for block in self.conv_blocks():
            x = block(x)
        x = x.mean(dim=3)  # over mel → (N, 2048, frames)
        x = x.amax(dim=2) + x.mean(dim=2)
        embedding = F.relu(self.fc1(x))
        return Cnn14Output(embedding, torch.sigmoid(self.fc_audioset(embedding)))


def _check_front_end(front_end: LogMelFrontEnd, state_dict: Mapping[str, object], source: str) -> None:
    """The file's copies of the front-end tensors, where present, must match what `front_end` computes."""
    for name, ours in front_end.published_tensors().items():
        if name not in state_dict:
            continue
        theirs = state_dict[name]
        misfit = f"{source} does not fit {front_end.config.describe()}: front-end tensor {name}"
        shape = tuple(theirs.shape) if isinstance(theirs, torch.Tensor) else type(theirs).__name__
        if shape != tuple(ours.shape):
            raise MissingWeightsError(f"{misfit} {shape} vs {tuple(ours.shape)}")
        assert isinstance(theirs, torch.Tensor)
        difference = (theirs.double() - ours.double()).abs().max().item()
        if difference > _FRONT_END_TOLERANCE * ours.abs().max().item():
            raise MissingWeightsError(f"{misfit} differs from ours by up to {difference:.3g}")


def load_cnn14_checkpoint(path: str | Path, config: Cnn14Config | None = None) -> Cnn14:
    """Cnn14 in eval mode with the weights of a published PANNs file (`{'model': state_dict, ...}`).

    A bare state dict is accepted too. The front-end tensors (`spectrogram_extractor.*`, `logmel_extractor.*`)
    may be present or absent: present ones must agree with the front end we compute (else
    `MissingWeightsError`) and are then dropped; our own copies are used. Any other missing, unexpected or
    wrongly shaped key, or an unreadable file, is a one-line `MissingWeightsError`.
    """
    checkpoint = read_weights_file(path)
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    front_end = LogMelFrontEnd(config or Cnn14Config())
    if isinstance(state_dict, Mapping):
        _check_front_end(front_end, state_dict, str(path))
        front_end_keys = front_end.published_tensors().keys()
        state_dict = {k: v for k, v in state_dict.items() if k not in front_end_keys}
    model = build_loaded(lambda: Cnn14(config), state_dict, str(path))
    assert isinstance(model, Cnn14)
    model.front_end = front_end  # computed, not loaded: built for real, not on the meta device
    return model
