"""--backend and --precision on the CPU: what runs, what is recorded, what mixes in a store, what is refused."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core import cpu
from extract.core.errors import ProvenanceMismatchError, UsageError
from extract.media.sources import scan_folder
from extract.models import ExtractorOptions, build_extractor
from extract.models.backends import resolve_backend
from extract.models.backends.openvino_runtime import CACHE_FOLDER
from extract.models.presets import CLIP, VGGISH
from extract.run import ExtractionRun, RunConfig
from extract.store import FeatureStore
from tests.conftest import needs_openvino, run_cli
from tests.videos import make_video

CPU = torch.device("cpu")


@pytest.fixture
def clip_copy(tiny_clip: Path, tmp_path: Path) -> Path:
    """The tiny CLIP in a folder of its own: its OpenVINO cache starts empty."""
    folder = tmp_path / "clip"
    folder.mkdir()
    for file in tiny_clip.iterdir():
        if file.is_file():
            (folder / file.name).write_bytes(file.read_bytes())
    return folder


def _clip(model: Path, backend: str, precision: str = "fp32"):  # type: ignore[no-untyped-def]
    options = ExtractorOptions(CPU, None, precision, True, backend)
    return build_extractor(CLIP.with_options(weights=str(model)), options)


def _frames(count: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 224, 224, 3), dtype=np.uint8)


def test_auto_is_openvino_on_a_cpu_where_installed_and_torch_on_a_gpu(monkeypatch):
    monkeypatch.setattr("extract.models.backends.openvino_installed", lambda: True)
    assert resolve_backend("auto", CPU) == "openvino"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    monkeypatch.setattr("extract.models.backends.openvino_installed", lambda: False)
    assert resolve_backend("auto", CPU) == "torch"
    with pytest.raises(UsageError, match=r'OpenVINO is not installed; pip install -e "\.\[openvino\]"'):
        resolve_backend("openvino", CPU)
    with pytest.raises(UsageError, match="runs on the CPU, not cuda:0"):
        resolve_backend("openvino", torch.device("cuda", 0))


@needs_openvino
def test_openvino_converts_once_and_later_loads_read_the_cached_model(clip_copy, caplog):
    with caplog.at_level(logging.INFO, logger="img_vmr.extract"):
        first = _clip(clip_copy, "openvino")
    assert sum("converting clip-vision to OpenVINO" in r.message for r in caplog.records) == 1
    cached = sorted(p.suffix for p in (clip_copy / CACHE_FOLDER).iterdir() if not p.name.endswith(".lock"))
    assert cached == [".bin", ".xml"]  # no temporary file left
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="img_vmr.extract"):
        second = _clip(clip_copy, "openvino")
    assert not any("converting" in r.message for r in caplog.records)
    torch_rows = _clip(clip_copy, "torch").embed(_frames())
    for extractor in (first, second):
        assert extractor.backend_runtime()["backend"] == "openvino"
        np.testing.assert_allclose(extractor.embed(_frames()), torch_rows, atol=1e-5, rtol=1e-4)
    assert first.embed(_frames(1)).shape == (1, 16)  # any batch size: one dynamic-batch model


@needs_openvino
def test_two_processes_starting_together_convert_once(clip_copy):
    code = (
        "import logging, sys, torch; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
        "from extract.models import ExtractorOptions, build_extractor\nfrom extract.models.presets import CLIP\n"
        f"e = build_extractor(CLIP.with_options(weights={str(clip_copy)!r}), "
        "ExtractorOptions(torch.device('cpu'), backend='openvino'))\nprint('backend', e.backend_runtime()['backend'])"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert sum(out.count("converting clip-vision to OpenVINO") for out in outputs) == 1, outputs
    assert all("backend openvino" in out for out in outputs)


@needs_openvino
def test_a_conversion_failure_is_one_line_and_torch_runs(clip_copy, monkeypatch, caplog):
    import openvino

    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported operation: aten::frobnicate\nlong trace\nmore")

    monkeypatch.setattr(openvino, "convert_model", broken)
    with caplog.at_level(logging.WARNING, logger="img_vmr.extract"):
        extractor = _clip(clip_copy, "openvino")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        "OpenVINO could not run clip-vision (RuntimeError: Unsupported operation: aten::frobnicate); "
        "running it on torch instead"
    )
    assert extractor.backend_runtime()["backend"] == "torch"
    assert extractor.embed(_frames()).shape == (3, 16)


def test_bf16_is_refused_in_one_line_where_the_cpu_lacks_it(monkeypatch, published_weights):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(cpu, "cpu_name", lambda: "Some CPU")
    options = ExtractorOptions(CPU, published_weights, "bf16", verify_weights=False, backend="torch")
    with pytest.raises(UsageError) as error:
        build_extractor(VGGISH, options)
    message = str(error.value)
    assert "\n" not in message and message.startswith("--precision bf16: Some CPU has no native bf16")
    assert message.endswith("use --precision fp32")


@pytest.mark.skipif(cpu.native_bf16(), reason="this CPU has bf16: the refusal is checked in-process above")
def test_the_cli_refuses_bf16_on_this_cpu(tmp_path, tiny_clip):
    make_video(tmp_path / "videos" / "a.mp4", seconds=1)
    result = run_cli(
        tmp_path / "videos",
        "--out",
        tmp_path / "f.h5",
        "--clip-model",
        tiny_clip,
        "--device",
        "cpu",
        "--precision",
        "bf16",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("img-extract: error: --precision bf16: ")
    assert not (tmp_path / "f.h5").exists()


@needs_openvino
def test_openvino_that_would_quietly_compute_f32_under_a_bf16_hint_is_refused(clip_copy, monkeypatch):
    if cpu.native_bf16():
        pytest.skip("this CPU computes bf16: OpenVINO honours the hint here")
    monkeypatch.setattr(cpu, "native_bf16", lambda: True)  # past the flag check, as on a CPU that misreports
    with pytest.raises(UsageError, match=r"OpenVINO computes clip-vision in f32 on this CPU"):
        _clip(clip_copy, "openvino", "bf16")


def _run(videos: Path, out: Path, model: Path, backend: str, precision: str = "fp32") -> None:
    options = ExtractorOptions(CPU, None, precision, True, backend)
    run = ExtractionRun(
        scan_folder(videos), out, [CLIP.with_options(weights=str(model))], options, RunConfig(progress=False, workers=1)
    )
    try:
        run.run()
    finally:
        run.close()


def test_bf16_rows_never_join_fp32_rows_of_the_same_feature(tmp_path, clip_copy, monkeypatch):
    monkeypatch.setattr(cpu, "native_bf16", lambda: True)  # torch computes bf16 here either way (emulated)
    make_video(tmp_path / "videos" / "a.mp4", seconds=2)
    _run(tmp_path / "videos", tmp_path / "f.h5", clip_copy, "torch")
    make_video(tmp_path / "videos" / "b.mp4", seconds=2)
    with pytest.raises(ProvenanceMismatchError, match=r"precision: 'fp32' -> 'bf16'"):
        _run(tmp_path / "videos", tmp_path / "f.h5", clip_copy, "torch", "bf16")
    _run(tmp_path / "videos", tmp_path / "bf16.h5", clip_copy, "torch", "bf16")
    with FeatureStore(tmp_path / "bf16.h5") as store:
        assert store.provenance("clip")["precision"] == "bf16"
        assert store.provenance_record("clip")["runtime"]["backend"] == "torch"


@needs_openvino
def test_a_store_holds_fp32_rows_of_both_backends_and_says_so(tmp_path, clip_copy):
    videos = tmp_path / "videos"
    make_video(videos / "a.mp4", seconds=2)
    out = tmp_path / "f.h5"
    first = run_cli(
        videos, "--out", out, "--clip-model", clip_copy, "--device", "cpu", "--backend", "auto", timeout=900
    )
    assert first.returncode == 0, first.stderr
    make_video(videos / "b.mp4", seconds=2)
    second = run_cli(
        videos, "--out", out, "--clip-model", clip_copy, "--device", "cpu", "--backend", "torch", timeout=900
    )
    assert second.returncode == 0, second.stderr
    report = json.loads(run_cli("inspect", out, "--json").stdout)
    backends = report["features"]["clip"]["backends"]
    assert [name.split()[0] for name in backends] == ["openvino", "torch"] and sum(backends.values()) == 2
    text = run_cli("inspect", out).stdout
    assert "MIXED BACKENDS: openvino " in text and "rows agree within the golden tolerances" in text
    with FeatureStore(out) as store:
        assert store.part_provenance("a", "clip")["runtime"]["backend_version"].count(".") >= 1
        assert store.provenance("clip")["precision"] == "fp32"


def test_bf16_on_the_cpu_is_the_documented_distance_from_fp32(published_weights, monkeypatch):
    """torch autocast bf16 (emulated where the CPU lacks bf16) against fp32 on the same VGGish examples: the
    numbers of docs/performance.md; on a CPU with bf16 the same run is the real one."""
    monkeypatch.setattr(cpu, "native_bf16", lambda: True)
    inputs = np.random.default_rng(0).normal(0, 0.1, (4, 15600)).astype(np.float32)
    rows = {
        precision: build_extractor(VGGISH, ExtractorOptions(CPU, published_weights, precision, False, "torch")).embed(
            inputs
        )
        for precision in ("fp32", "bf16")
    }
    diff = np.abs(rows["bf16"] - rows["fp32"]).max()
    print(f"\nVGGish bf16 vs fp32: max |diff| {diff:.3g}")
    assert 0 < diff < 0.1
