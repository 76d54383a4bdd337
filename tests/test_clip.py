import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extract.core import cpu
from extract.core.errors import MissingWeightsError
from extract.media.decode import FrameSampling, iter_frames
from extract.media.probe import probe
from extract.models import ExtractorOptions, build_extractor
from extract.models.presets import CLIP
from extract.store import FeatureStore
from tests.conftest import cli_entry
from tests.videos import REAL_VIDEO, make_video

CPU = ExtractorOptions(device=torch.device("cpu"))
TORCH_CPU = ExtractorOptions(device=torch.device("cpu"), backend="torch")


def _frames(path: Path, sampling: FrameSampling) -> np.ndarray:
    return np.concatenate([b.data for b in iter_frames(probe(path), sampling)])


def _hf_reference(model_dir: Path, frames: np.ndarray) -> np.ndarray:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    processor = CLIPImageProcessor.from_pretrained(model_dir)
    model = CLIPVisionModelWithProjection.from_pretrained(model_dir).eval()
    pixels = processor(images=[Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return model(pixel_values=pixels).image_embeds.numpy()


def _hf_on_pixels(model_dir: Path, frames: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """transformers' CLIPVisionModelWithProjection on our decoded frames, normalised as the extractor does."""
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(model_dir).eval()
    shape = (1, 3, 1, 1)
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255.0)
    pixels = (pixels - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
    with torch.inference_mode():
        return model(pixel_values=pixels).image_embeds.numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("source", ["real", "synthetic"])
def test_our_decode_path_matches_clip_image_processor(
    tiny_clip: Path, tmp_path: Path, source: str, backend: str
) -> None:
    """Our decode + normalisation + the model on each installed backend against CLIPImageProcessor + the model."""
    video = REAL_VIDEO if source == "real" else make_video(tmp_path / "s.mp4", seconds=4, size="640x360")
    options = ExtractorOptions(device=torch.device("cpu"), backend=backend)
    extractor = build_extractor(CLIP.with_options(weights=str(tiny_clip)), options)
    assert extractor.backend_runtime()["backend"] == backend
    assert extractor.frame_sampling is not None
    ours = extractor.embed(_frames(video, extractor.frame_sampling))
    native = _frames(video, FrameSampling(fps=1.0, resize="none", crop=0))
    reference = _hf_reference(tiny_clip, native)
    cosine = _cosine(ours, reference)
    print(f"{source} on {backend}: cosine per frame min {cosine.min():.6f} mean {cosine.mean():.6f}")
    assert ours.shape == reference.shape
    assert cosine.min() >= 0.999


@pytest.mark.skipif(not cpu.native_bf16(), reason="--precision bf16 runs only on a CPU with bf16 instructions")
def test_bf16_on_the_real_video_is_the_documented_distance_from_fp32(tiny_clip: Path, backend: str) -> None:
    """--precision bf16 through the product path on each backend against fp32 on the same frames
    (docs/performance.md)."""
    rows = {}
    for precision in ("fp32", "bf16"):
        options = ExtractorOptions(device=torch.device("cpu"), precision=precision, backend=backend)
        extractor = build_extractor(CLIP.with_options(weights=str(tiny_clip)), options)
        assert extractor.backend_runtime()["backend"] == backend and extractor.frame_sampling is not None
        rows[precision] = extractor.embed(_frames(REAL_VIDEO, extractor.frame_sampling)).astype(np.float64)
    diff = np.abs(rows["bf16"] - rows["fp32"]).max()
    cosine = _cosine(rows["bf16"], rows["fp32"])
    print(
        f"\nCLIP bf16 on {backend} vs fp32: max |diff| {diff:.3g} (max |value| {np.abs(rows['fp32']).max():.3g}),"
        f" cosine per frame min {cosine.min():.6f}"
    )
    assert 0 < diff < 0.1 and cosine.min() > 0.999


def test_recipe_records_the_resolved_model(tiny_clip: Path) -> None:
    extractor = build_extractor(CLIP.with_options(weights=str(tiny_clip), fps=0.5), CPU)
    recipe = extractor.recipe()
    assert recipe["output_dim"] == 16 and recipe["frames.fps"] == 0.5 and recipe["frames.crop"] == 224
    assert recipe["weights_file"] == "model.safetensors" and len(recipe["weights_sha256"]) == 64


def test_model_found_under_weights_dir(tiny_clip: Path) -> None:
    extractor = build_extractor(
        CLIP.with_options(weights=f"someone/{tiny_clip.name}"),
        ExtractorOptions(device=torch.device("cpu"), weights_dir=tiny_clip.parent),
    )
    assert extractor.recipe()["output_dim"] == 16


def test_missing_model_offline_is_one_line_with_the_fix(tmp_path: Path) -> None:
    options = ExtractorOptions(device=torch.device("cpu"), weights_dir=tmp_path)
    with pytest.raises(MissingWeightsError) as error:
        build_extractor(CLIP.with_options(weights="openai/not-a-model-here"), options)
    message = str(error.value)
    assert "\n" not in message and "https://huggingface.co/openai/not-a-model-here" in message
    assert "--weights-dir" in message


def test_our_clip_network_equals_transformers_on_the_real_video(tiny_clip: Path) -> None:
    """extract/models/clip_network.py against transformers' model on the same pixels: float32 noise at most."""
    extractor = build_extractor(CLIP.with_options(weights=str(tiny_clip)), TORCH_CPU)
    assert extractor.frame_sampling is not None
    frames = _frames(REAL_VIDEO, extractor.frame_sampling)
    preprocessing = extractor.preset.preprocessing
    reference = _hf_on_pixels(tiny_clip, frames, preprocessing["mean"], preprocessing["std"])
    diff = np.abs(extractor.embed(frames) - reference).max()
    print(f"\nCLIP network vs transformers on {len(frames)} real frames: max |diff| {diff:.3g}")
    assert diff <= 1e-5


def test_img_extract_computes_clip_without_importing_transformers(tiny_clip: Path, tmp_path: Path) -> None:
    """The CLI's CLIP features equal transformers' on the same frames, and no process of the run imported
    transformers (PYTHONPROFILEIMPORTTIME reaches every process it starts)."""
    video = make_video(tmp_path / "videos" / "a.mp4", seconds=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPROFILEIMPORTTIME": "1"}
    out = tmp_path / "f.h5"
    command = [*cli_entry(), str(video.parent), "--out", str(out), "--clip-model", str(tiny_clip)]
    result = subprocess.run(
        [*command, "--device", "cpu", "--backend", "torch", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = re.findall(r"^import time:.*\|\s*(\S+)$", result.stderr, flags=re.MULTILINE)
    assert "torch" in imported and not [name for name in imported if name.split(".")[0] == "transformers"]
    with FeatureStore(out) as store:
        stored = store.track("a", "clip").features
    extractor = build_extractor(CLIP.with_options(weights=str(tiny_clip)), TORCH_CPU)
    assert extractor.frame_sampling is not None
    frames = _frames(video, extractor.frame_sampling)
    preprocessing = extractor.preset.preprocessing
    reference = _hf_on_pixels(tiny_clip, frames, preprocessing["mean"], preprocessing["std"])
    assert stored.shape == reference.shape and len(stored) == 2
    assert np.abs(stored - reference).max() <= 1e-5
