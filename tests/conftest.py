from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny CLIP vision tower saved like a HF model folder (no download)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def published_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --weights-dir holding the goldens' weights in the published files' names and layouts."""
    from extract.models.panns import Cnn14
    from tests.golden import golden_tensors
    from tests.testdata import GOOGLE_VGGISH_PCA

    folder = tmp_path_factory.mktemp("weights")
    i3d = golden_tensors("i3d", 101)
    torch.save(i3d, folder / "rgb_imagenet.pt")
    generator = torch.Generator().manual_seed(157)
    charades_head = {
        "logits.conv3d.weight": torch.randn(157, 1024, 1, 1, 1, generator=generator) / 32,
        "logits.conv3d.bias": torch.zeros(157),
    }
    torch.save({**i3d, **charades_head}, folder / "rgb_charades.pt")
    vggish = golden_tensors("vggish", 201)
    torch.save({k: v for k, v in vggish.items() if not k.startswith("pca_")}, folder / "vggish-10086976.pth")
    with np.load(GOOGLE_VGGISH_PCA) as google:  # Google's real PCA parameters
        pca = {key: torch.from_numpy(google[key]) for key in ("pca_eigen_vectors", "pca_means")}
    torch.save(pca, folder / "vggish_pca_params-970ea276.pth")
    panns = {**golden_tensors("panns_cnn14", 301), **Cnn14().front_end.published_tensors()}
    torch.save({"iteration": 0, "model": panns}, folder / "Cnn14_mAP=0.431.pth")
    return folder


@pytest.fixture
def real_time_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Call it to point $IMG_FFMPEG at a wrapper that adds `-re`: from then on every ffmpeg the product runs (probe,
    frames, audio) reads its input at the native rate, a decoder exactly as slow as real time that keeps reading.
    Make the test's videos before calling it (making them would be slowed down too)."""
    from extract import ffmpeg_binary

    def slow_down() -> None:
        wrapper = tmp_path / "ffmpeg-re"
        wrapper.write_text(f'#!/bin/sh\nexec "{ffmpeg_binary.ffmpeg_path()}" -re "$@"\n')
        wrapper.chmod(0o755)
        monkeypatch.setenv("IMG_FFMPEG", str(wrapper))
        ffmpeg_binary.ffmpeg_path.cache_clear()

    yield slow_down
    monkeypatch.delenv("IMG_FFMPEG", raising=False)
    ffmpeg_binary.ffmpeg_path.cache_clear()


def run_cli(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run img-extract as a user would (a real subprocess), offline, without a progress bar."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    script = Path(sys.executable).parent / "img-extract"
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "extract.cli"]
    command = [*entry, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
