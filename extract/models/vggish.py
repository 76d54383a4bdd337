"""VGGish (AudioSet): the log-mel front end, the VGG network and the PCA / 8-bit post-processor.

A clean-room reimplementation of harritaylor/torchvggish `f3f9096` (itself a port of Google's AudioSet VGGish),
checked against its golden vectors through the product's decoding and windowing (tests/test_golden_vggish.py).
Reading order: front end (`examples_from_windows`; decoding to 16-kHz mono and cutting the windows are the
product's: extract/media/decode.py, extract/models/windows.py), network (`VGGish`, one 128-d post-ReLU embedding
per 0.96-s example), post-processor (`VGGishPostprocessor`), loaders.

The module and parameter names of `VGGish` are those of `vggish-10086976.pth` (positions in `nn.Sequential`),
so the published file loads unchanged.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from extract.core.errors import MissingWeightsError
from extract.models.weights import build_loaded, check_weights_fit, read_weights_file

# Front end, as in the reference's vggish_params.py / vggish_input.py.
SAMPLE_RATE = 16000
STFT_WINDOW = 400  # 25 ms
STFT_HOP = 160  # 10 ms
FFT_LENGTH = 512  # next power of two above the window
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # frames per example, and the hop between examples (no overlap)
EXAMPLE_SECONDS = EXAMPLE_FRAMES * STFT_HOP / SAMPLE_RATE  # 0.96

# Network and post-processor.
EMBEDDING_DIM = 128
QUANTIZE_MIN = -2.0
QUANTIZE_MAX = 2.0


def _hertz_to_mel(hertz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale."""
    return 1127.0 * torch.log(1.0 + hertz / 700.0)


@functools.cache
def mel_weight_matrix() -> torch.Tensor:
    """(257, 64) float64 triangular mel weights on the magnitude spectrum, peak 1, no area normalisation."""
    bin_mel = _hertz_to_mel(torch.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1, dtype=torch.float64))
    edges = torch.linspace(
        float(_hertz_to_mel(torch.tensor(MEL_MIN_HZ, dtype=torch.float64))),
        float(_hertz_to_mel(torch.tensor(MEL_MAX_HZ, dtype=torch.float64))),
        MEL_BANDS + 2,
        dtype=torch.float64,
    )
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bin_mel[:, None]) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0] = 0.0  # the reference zeroes the DC bin
    return weights


def log_mel_spectrogram(waveform: torch.Tensor) -> torch.Tensor:
    """(..., frames, 64) log-mel of mono 16-kHz float64 waveforms (..., len): frames = 1 + (len - 400) // 160.

    Uncentred, unpadded STFT with a periodic Hann window, magnitude (not power), then ln(mel + 0.01). Leading
    dimensions are a batch (the extractor embeds many 0.975-s windows at once); too short a waveform gives none.
    """
    if waveform.shape[-1] < STFT_WINDOW:
        return waveform.new_zeros((*waveform.shape[:-1], 0, MEL_BANDS))
    frames = waveform.unfold(-1, STFT_WINDOW, STFT_HOP)
    window = torch.hann_window(STFT_WINDOW, periodic=True, dtype=waveform.dtype, device=waveform.device)
    magnitude = torch.fft.rfft(frames * window, n=FFT_LENGTH).abs()
    return torch.log(magnitude @ mel_weight_matrix().to(magnitude.device) + LOG_OFFSET)


def examples_from_windows(windows: torch.Tensor) -> torch.Tensor:
    """(B, 15600) windows of 16-kHz mono audio, as `AudioWindows` cuts them -> (B, 1, 96, 64) float32 examples.

    One window of 400 + 95 * 160 samples gives exactly the 96 STFT frames of one example; windows start every
    96 * 160 = 15,360 samples, so consecutive examples share no frame, as in the reference's framing of the
    whole log-mel spectrogram. The spectrogram is computed in float64, as the reference's numpy does.
    """
    return log_mel_spectrogram(windows.to(torch.float64)).unsqueeze(1).to(torch.float32)


def _vgg_features() -> nn.Sequential:
    """Conv3x3 stacks 64 | 128 | 256, 256 | 512, 512, each stack closed by a 2x2 max-pool: 96x64 -> 6x4."""
    layers: list[nn.Module] = []
    in_channels = 1
    for stack in ((64,), (128,), (256, 256), (512, 512)):
        for out_channels in stack:
            layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = out_channels
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """(N, 1, 96, 64) log-mel examples -> (N, 128) raw embeddings (post-ReLU, before PCA / quantisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg_features()
        self.embeddings = nn.Sequential(
            nn.Linear(6 * 4 * 512, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM),
            nn.ReLU(inplace=True),
        )

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        maps = self.features(examples)  # (N, 512, 6, 4)
        # The TensorFlow original flattens channels-last (time, band, channel); the converted weights expect it.
        return self.embeddings(maps.permute(0, 2, 3, 1).flatten(1))


class VGGishPostprocessor(nn.Module):
    """AudioSet's PCA (with whitening) of the raw embeddings, then clipping to [-2, 2] and 8-bit quantisation.

    `pca` gives the float32 PCA output, `quantize` maps it to whole numbers 0..255 as uint8 (rounding halves to
    even), and calling the module does both. Unlike the reference there is no final squeeze: N = 1 stays (1, 128).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pca_eigen_vectors", torch.zeros(EMBEDDING_DIM, EMBEDDING_DIM))
        self.register_buffer("pca_means", torch.zeros(EMBEDDING_DIM))

    def pca(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, 128) raw embeddings -> (N, 128) float32 (E · (embᵀ − μ))ᵀ, in the reference's order of operations."""
        centred = embeddings.to(torch.float32).T - self.pca_means[:, None]
        return (self.pca_eigen_vectors @ centred).T

    @staticmethod
    def quantize(pca_applied: torch.Tensor) -> torch.Tensor:
        clipped = torch.clamp(pca_applied, QUANTIZE_MIN, QUANTIZE_MAX)
        scaled = (clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN))
        return torch.round(scaled).to(torch.uint8)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.pca(embeddings))


def load_vggish_checkpoint(path: str | Path) -> VGGish:
    """`vggish-10086976.pth` (a plain state dict of the network) -> `VGGish` in eval mode."""
    model = build_loaded(VGGish, read_weights_file(path), source=str(path))
    assert isinstance(model, VGGish)
    return model


# torchvggish's PCA .pth most likely holds numpy arrays (harritaylor/torchvggish#11), which `weights_only`
# refuses by default; these are the only globals such a file needs (under numpy 1 and numpy 2 module paths).
_RECONSTRUCT_ARRAY = np.zeros(0).__reduce__()[0]
_NUMPY_ARRAY_GLOBALS = [
    (_RECONSTRUCT_ARRAY, "numpy.core.multiarray._reconstruct"),
    (_RECONSTRUCT_ARRAY, "numpy._core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    *(type(np.dtype(dtype)) for dtype in (np.float32, np.float64)),
]


def _read_pca_file(path: Path) -> object:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except FileNotFoundError:
            raise MissingWeightsError(f"{path} does not exist") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise MissingWeightsError(f"{path} is not a readable npz (truncated or corrupt?): {exc}") from exc
    with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
        return read_weights_file(path)


def load_pca_params(path: str | Path) -> VGGishPostprocessor:
    """PCA parameters -> `VGGishPostprocessor`: Google's `vggish_pca_params.npz` or torchvggish's
    `vggish_pca_params-970ea276.pth`; both hold `pca_eigen_vectors` (128, 128) and `pca_means` (128,)."""
    path = Path(path)
    params = _read_pca_file(path)
    if isinstance(params, dict):
        # Like the reference: float32, and the means as one vector whether stored as (128,) or (128, 1).
        params = {
            key: torch.as_tensor(value, dtype=torch.float32) if isinstance(value, np.ndarray | torch.Tensor) else value
            for key, value in params.items()
        }
        if isinstance(params.get("pca_means"), torch.Tensor):
            params["pca_means"] = params["pca_means"].reshape(-1)
    postprocessor = VGGishPostprocessor()
    check_weights_fit(postprocessor, params, source=str(path))
    postprocessor.load_state_dict(params)
    return postprocessor.eval()
