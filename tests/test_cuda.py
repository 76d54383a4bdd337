"""What runs only on a CUDA GPU: extractors under fp16/bf16 autocast, pinned non-blocking copies to the device,
fp16 training with the GradScaler, and answers on the GPU. Skipped without one (`needs_cuda`, which marks them
`cuda`); benchmarks/gpu_check.sh runs them on GPU nodes. Lean: a GPU is lent for minutes.

They import only what a GPU node without the project's extras has (no decord, nltk, GloVe package or ray)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import needs_cuda

pytestmark = needs_cuda


def build(name: str, device: str, precision: str, weights: Path, clip: Path):  # type: ignore[no-untyped-def]
    from extract.models import ExtractorOptions, build_extractor
    from extract.models.presets import get_preset

    preset = get_preset(name)
    preset = preset.with_options(weights=str(clip))
    return build_extractor(preset, ExtractorOptions(torch.device(device), weights, precision, verify_weights=False))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", ["clip", "i3d-charades-vslnet", "vggish", "panns"])
def test_extractors_under_autocast_on_the_gpu_agree_with_fp32_on_the_cpu(
    name: str, precision: str, published_weights: Path, tiny_clip: Path
) -> None:
    from benchmarks.bench_extract import synthetic_units

    reference = build(name, "cpu", "fp32", published_weights, tiny_clip)
    inputs = synthetic_units(reference, 3.0)[:4]
    a = reference.embed(inputs)
    b = build(name, "cuda", precision, published_weights, tiny_clip).embed(inputs)
    assert b.dtype == a.dtype == np.float32 and b.shape == a.shape and np.isfinite(b).all()
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    assert cosine.min() >= 0.99, cosine


def test_pinned_non_blocking_copies_arrive_whole(tiny_clip: Path, published_weights: Path) -> None:
    """Several copies in flight at once, from pinned buffers the host allocator may reuse: each arrives intact."""
    extractor = build("clip", "cuda", "fp16", published_weights, tiny_clip)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8) for _ in range(8)]
    tensors = [extractor.to_device(array) for array in arrays]
    torch.cuda.synchronize()
    for array, tensor in zip(arrays, tensors, strict=True):
        assert tensor.device.type == "cuda" and torch.equal(tensor.cpu(), torch.from_numpy(array))


def test_fp16_training_with_the_grad_scaler_and_answers_on_the_gpu(tmp_path: Path) -> None:
    """img-train --precision fp16 on the GPU (autocast + GradScaler) trains to finite weights and metrics, and the
    Predictor answers on the GPU (fp16) as on the CPU (fp32)."""
    from extract.store import Track
    from img_model.checkpoint import read_checkpoint
    from img_model.predict.feature_cache import VideoFeatures
    from img_model.predict.predictor import Predictor
    from img_model.predict.queries import QueryInput
    from tests.img_cli import run_img_train, tiny_dataset

    data = tiny_dataset(tmp_path / "data")
    trained = run_img_train(
        *data.cli_data_args(),
        "--config",
        data.folder / "tiny.toml",
        "--no-progress",
        "--device",
        "cuda",
        "--precision",
        "fp16",
        "--out",
        tmp_path / "run",
    )
    assert trained.returncode == 0, trained.stderr
    checkpoint = read_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(w).all() for w in checkpoint.state_dict.values() if w.is_floating_point())
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        assert all(math.isfinite(v) for v in _numbers(json.loads(line))), line

    config, rng = checkpoint.config, np.random.default_rng(0)
    steps = 20
    spans = np.stack([np.arange(steps), np.arange(steps) + 1.0], axis=1)
    features = VideoFeatures(
        tmp_path / "v.mp4",
        "v",
        float(steps),
        True,
        Track(rng.standard_normal((steps, config.video_feature_dim)).astype(np.float32), spans),
        Track(rng.standard_normal((steps, config.audio_feature_dim)).astype(np.float32), spans),
    )
    words = rng.integers(1, config.glove_words + 2, 4)
    query = QueryInput("a query", words, [rng.integers(1, config.char_vocab_size, 3) for _ in words])
    cpu = Predictor(checkpoint, None, None, torch.device("cpu")).answer(features, [query], 3)  # type: ignore[arg-type]
    gpu = Predictor(checkpoint, None, None, torch.device("cuda"), "fp16").answer(features, [query], 3)  # type: ignore[arg-type]
    assert gpu.audio_used and len(gpu.answers) == len(cpu.answers) == 1
    for name in ("start_probabilities", "end_probabilities"):  # the argmax may flip between near-equal steps
        on_gpu, on_cpu = (np.array(getattr(answers.answers[0], name)) for answers in (gpu, cpu))
        assert on_gpu.shape == on_cpu.shape == (steps,) and np.abs(on_gpu - on_cpu).max() < 1e-2, name


def _numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []
