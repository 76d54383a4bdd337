r"""Everything that needs a CUDA GPU, in one time-boxed run: benchmarks/gpu_check.sh calls this.

A preflight first (Python, every package the steps import, torch's CUDA, a runnable ffmpeg): what is missing is
named with the command that brings it, before any step runs. Then the steps, each in its own process with a
timeout (a hung CUDA call or decoder is killed, recorded as a timeout, and the next step runs), all within one
deadline (default 360 s, after a preflight of at most 90 s: the check ends well inside 8 minutes; a step that
cannot start in time is recorded as not run). Ordered so that what is most worth a rare GPU comes first and one
failure takes down only what depends on it:

    setup        the goldens' weights in the published layouts and a CLIP with random weights (ViT-B/32 shape;
                 tiny in --dry-run), saved where the presets look for them: nothing is downloaded, so a GPU node
                 without internet works; the doctor's report of the machine. With --weights-dir DIR (a folder
                 that tests/conftest.py's write_published_weights filled, as the test suite has one) the goldens'
                 files are linked from DIR instead of written again (about 850 MB)
    cuda-tests   pytest -m cuda: the tests skipped without a GPU (`needs_cuda`, tests/conftest.py)
    train-step   IMG training step (forward, loss, backward; Charades configuration, B=16, Lv=128): median
                 time and peak memory in fp32, bf16 and fp16 autocast
    precision    per extractor, the per-row cosine of fp16 and bf16 features against fp32 on the same synthetic
                 inputs (frames or audio made in memory: no decoding, no ffmpeg)
    videos       the synthetic videos (ffmpeg); only the extraction needs them
    extract      every preset in one process with one budget: clip, i3d-charades-vslnet, vggish and panns measured
                 on all videos, then the presets that differ from those only in sampling or output
                 (i3d-anet-vslnet, i3d, vggish-quantized) on BRIEF_VIDEOS: the decode-only rate (the run's
                 decoder, `workers` videos at once) and the extraction run (ExtractionRun, fp16 autocast on
                 CUDA): clips/s, frames/s (or seconds of audio per second), GPU utilisation and memory sampled by
                 nvidia-smi every 0.5 s, peak memory allocated; decode-bound when the run reaches 85% of the
                 decode-only rate, else compute-bound. Each preset's numbers are saved as it finishes: a timeout
                 keeps them
    ddp          with two GPUs: the tiny synthetic run on 1 process and on 2 (torchrun, NCCL); every metric
                 compared and the weights' relative difference (skipped with one GPU)

Results: OUT/gpu_check.json and OUT/gpu_check.md (rewritten after every step, so a killed check leaves what it
measured). --dry-run runs the same steps on the CPU with tiny inputs (1 video, a tiny CLIP, a small training
batch, fp32 extraction runs as a CPU runs them, the DDP check on 2 gloo processes): CI runs it
(tests/test_gpu_check.py).

    benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--deadline-s 360] [--steps setup,extract,...]
                            [--weights-dir DIR]  # the goldens' weights already written: linked, not rewritten
    benchmarks/gpu_check.sh --preflight       # only the checks of the machine

The code the steps run is the project's, for Python 3.11 to 3.13 (requires-python; the GPU nodes' Python is 3.12):
it runs from the source tree with PYTHONPATH, no install.

On a GPU node without internet (the device machine: Python 3.12 with torch, transformers, h5py, ... but no
imageio-ffmpeg and no system ffmpeg), bring the missing wheels: here, with PyPI, `bash benchmarks/gpu_wheels.sh`
(writes .whl/), then run on the device with carry [".whl"]:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PWD:/tmp/site && bash benchmarks/gpu_check.sh --out $OUT

Over 450 lines on purpose: what a GPU node runs whole, its steps, their budget and the report, in one script.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the steps import benchmarks.* and tests.* from the checkout
    sys.path.insert(0, str(ROOT))
PRESET_NAMES = ("clip", "i3d-charades-vslnet", "i3d-anet-vslnet", "i3d", "vggish", "vggish-quantized", "panns")
# One preset per distinct model, measured on every video; the others differ from one of these only in frame
# sampling or output (I3D's three presets, VGGish quantized) and are measured briefly.
FULL_PRESETS = ("clip", "i3d-charades-vslnet", "vggish", "panns")
BRIEF_PRESETS = tuple(name for name in PRESET_NAMES if name not in FULL_PRESETS)
EXTRACTORS = FULL_PRESETS  # one preset per model, for the precision check
BRIEF_VIDEOS = 2
DECODE_BOUND = 0.85  # the run reaches this share of the decode-only rate: decoding is what limits it
MIN_STEP_S = 20.0  # a step is not started with less time than this left before the deadline
PREFLIGHT_TIMEOUT_S = 90.0  # before the steps' deadline: together at most 7.5 minutes, even if all time out
DEADLINE_S = 360.0

# --- what the steps need, and what the GPU node has -----------------------------------------------------------

# Every third-party module the code of the steps imports itself (their own dependencies come with them), and
# the distribution that brings it. The import graph was read off a dry run; the steps import lazily, so nothing
# else (decord2, nltk, ray, fastapi, ...) is needed. ffmpeg comes from imageio-ffmpeg, the system or $IMG_FFMPEG.
STEP_IMPORTS = {
    "torch": "torch",
    "numpy": "numpy",
    "h5py": "h5py",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "click": "click",
    "tqdm": "tqdm",
    "PIL": "pillow",
    "tensorboard": "tensorboard",  # img-train's SummaryWriter (ddp step)
    "pytest": "pytest",  # cuda-tests, and tests.conftest's weights writer (setup)
}
FFMPEG_DISTRIBUTION = "imageio-ffmpeg"
# The device machine's packages (/work/.library/device/KINDS.md, "nvidia-h200", read 2026-11-17), those of the
# names above; imageio-ffmpeg is not among them, and it has no system ffmpeg.
NODE_PACKAGES = frozenset(
    {"torch", "numpy", "h5py", "transformers", "safetensors", "click", "tqdm", "pillow", "tensorboard", "pytest"}
)
# Versions of the wheels to carry when not the one installed here: imageio-ffmpeg 0.8's wheel (68 MB) alone is
# over the 64 MiB a device call carries; 0.6.0 (29 MB, ffmpeg 7.0.2) satisfies pyproject (>=0.5).
WHEEL_PINS = {"imageio-ffmpeg": "0.6.0"}
DEVICE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && "
    "export PYTHONPATH=$PWD:/tmp/site && bash benchmarks/gpu_check.sh --out $OUT"
)


def wheels_to_carry() -> list[str]:
    """NAME==VERSION of every distribution the steps need that the GPU node lacks (benchmarks/gpu_wheels.sh)."""
    from importlib.metadata import PackageNotFoundError, version

    wheels = []
    for name in sorted({*STEP_IMPORTS.values(), FFMPEG_DISTRIBUTION} - NODE_PACKAGES):
        try:
            pin = WHEEL_PINS.get(name) or version(name)
        except PackageNotFoundError:
            pin = None
        wheels.append(f"{name}=={pin}" if pin else name)
    return wheels


def how_to_bring(distributions: list[str]) -> list[str]:
    return [
        f"  with internet: {sys.executable} -m pip install {' '.join(distributions)}",
        "  on the GPU node without internet: here, with PyPI, run `bash benchmarks/gpu_wheels.sh` (wheels into .whl/),",
        '  then on the device: carry [".whl"] and run',
        f"    {DEVICE_COMMAND}",
    ]


def preflight(dry_run: bool) -> tuple[list[str], list[str]]:
    """(lines, problems): the Python, each package the steps import, torch's CUDA and ffmpeg, one line each."""
    lines, problems, missing = [], [], []
    version = sys.version_info
    python = f"Python {platform.python_version()} ({sys.executable})"
    if version < (3, 11):
        problems.append(f"{python}: the steps need Python 3.11 or newer")
    else:
        lines.append(f"ok       {python}")
    for module, distribution in STEP_IMPORTS.items():
        try:
            imported = importlib.import_module(module)
        except Exception as error:  # an ImportError, or a package that is there but broken
            missing.append(distribution)
            problems.append(f"{module}: cannot import ({type(error).__name__}: {error}); pip package {distribution}")
            continue
        lines.append(f"ok       {module} {_version(distribution, imported)}".rstrip())
    if "torch" not in missing:
        import torch

        if torch.cuda.is_available():
            lines.append(f"ok       CUDA: {torch.cuda.device_count()} GPU(s), {torch.cuda.get_device_name(0)}")
        elif dry_run:
            lines.append("note     CUDA: no GPU (the dry run runs on the CPU)")
        else:
            from extract.core.devices import cuda_report

            report = cuda_report()
            why = report.unusable or report.hidden or "no CUDA GPU visible"
            problems.append(f"CUDA: torch {torch.__version__} cannot use a GPU: {why} (or run with --dry-run)")
    lines_ffmpeg, ffmpeg_problem = _ffmpeg_line()
    if ffmpeg_problem:
        problems.append(ffmpeg_problem)
        missing.append(FFMPEG_DISTRIBUTION)
    else:
        lines.append(lines_ffmpeg)
    if missing:
        problems += ["how to bring what is missing:", *how_to_bring(sorted(set(missing)))]
    return lines, problems


def _version(distribution: str, module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:  # imported from a folder on PYTHONPATH without its metadata
        return str(getattr(module, "__version__", ""))


def _ffmpeg_line() -> tuple[str, str | None]:
    try:
        from extract.core.errors import UsageError
        from extract.media.ffmpeg import ffmpeg_path
    except ImportError as error:  # numpy & co. missing: already said
        return "", f"ffmpeg: not checked ({error})"
    try:
        path = ffmpeg_path()
    except UsageError as error:
        return "", f"ffmpeg: {error}; pip package {FFMPEG_DISTRIBUTION}"
    except Exception as error:  # an imageio-ffmpeg that is there but broken
        return "", f"ffmpeg: {type(error).__name__}: {error}; pip package {FFMPEG_DISTRIBUTION}"
    done = subprocess.run([path, "-version"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return "", f"ffmpeg: {path} -version exited with status {done.returncode}; pip package {FFMPEG_DISTRIBUTION}"
    return f"ok       ffmpeg {done.stdout.split()[2] if done.stdout.count(' ') >= 2 else ''} ({path})", None


@dataclass(frozen=True)
class Sizes:
    """How much work each step does: a GPU node's, or the dry run's tiny inputs on the CPU."""

    device: str
    videos: int
    seconds: float
    batch_size: int
    workers: int
    precision: str  # of the extraction runs (a run asked for fp16 on a CPU is refused: extract/core/precision.py)
    clip_layers: int  # ViT-B/32 has 12
    train_batch: int
    train_video_len: int
    train_repeats: int
    precision_seconds: float  # of synthetic input per extractor in the precision step
    precision_units: int  # units compared per extractor
    threads: int  # torch CPU threads (0: torch's choice); a tiny model on busy cores is fastest on one
    weights_from: Path | None = None  # --weights-dir: the goldens' weights are linked from there, not written


GPU = Sizes("cuda", 16, 8.0, 64, min(8, os.cpu_count() or 1), "fp16", 12, 16, 128, 5, 8.0, 16, 0)
# 1 s of synthetic input is one unit for each extractor (CLIP samples 1 frame/s, I3D a 24-frame window at 24 fps)
DRY = Sizes("cpu", 1, 0.6, 8, 1, "fp32", 1, 2, 16, 1, 1.0, 1, 1)


@dataclass(frozen=True)
class Step:
    name: str
    timeout_s: float
    run: Callable[[Path, Sizes, Path], dict[str, Any]]  # (work, sizes, result file) -> result
    torch: bool = True  # the step's process imports torch (and takes the sizes' thread count)


# --- the steps (each runs in its own process: `gpu_check.py --step NAME`) ----------------------------------


def setup_step(work: Path, sizes: Sizes, result_file: Path) -> dict[str, Any]:
    from benchmarks.fixtures import TINY_CLIP, VIT_B_32, random_clip
    from extract.run.doctor import run_checks
    from tests.conftest import write_published_weights

    started = time.perf_counter()
    weights = work / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    for entry in weights.iterdir():  # links of an earlier run: a write must not go through them into their folder
        if entry.is_symlink():
            entry.unlink()
    if sizes.weights_from is None:
        write_published_weights(weights)
        source = "written"
    else:
        given = sorted(path for path in sizes.weights_from.resolve().iterdir() if path.is_file())
        if not given:
            raise RuntimeError(f"--weights-dir {sizes.weights_from} holds no files: give the folder of the weights")
        for path in given:
            (weights / path.name).unlink(missing_ok=True)
            (weights / path.name).symlink_to(path)
        source = f"linked from {sizes.weights_from}"
    # found as weights/clip-vit-base-patch32 by the clip preset
    random_clip(weights / "clip-vit-base-patch32", TINY_CLIP if sizes.clip_layers < 12 else VIT_B_32)
    checks = run_checks(weights)
    return {
        "setup_s": round(time.perf_counter() - started, 1),
        "weights": source,
        "machine": {check.name: check.lines for check in checks if check.name in ("ffmpeg", "torch", "cuda")},
        "broken": [check.name for check in checks if check.status == "broken"],
    }


def videos_step(work: Path, sizes: Sizes, result_file: Path) -> dict[str, Any]:
    from benchmarks.fixtures import make_videos

    started = time.perf_counter()
    made = make_videos(work / "videos", sizes.videos, sizes.seconds)
    return {"videos": len(made), "seconds_each": sizes.seconds, "made_s": round(time.perf_counter() - started, 1)}


def cuda_test_files() -> list[Path]:
    """The test files with a test skipped for want of a GPU (tests/conftest.py's needs_cuda or its reason)."""
    from tests.conftest import NEEDS_CUDA

    marks = ("needs_cuda", NEEDS_CUDA)
    return sorted(
        p for p in (ROOT / "tests").glob("test_*.py") if any(m in p.read_text(encoding="utf-8") for m in marks)
    )


def cuda_tests_step(work: Path, sizes: Sizes, result_file: Path) -> dict[str, Any]:
    files = [str(path) for path in cuda_test_files()]
    # addopts cleared: the project's `-n 2` needs pytest-xdist, which the GPU node lacks (and one GPU runs them in turn)
    command = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-m", "cuda", "-p", "no:cacheprovider", *files]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-300:]
    if done.returncode not in (0, 5):  # 5: nothing collected
        failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        raise RuntimeError(f"pytest -m cuda: {summary}; " + "; ".join(failed[:5]))
    return {"files": [Path(f).name for f in files], "summary": summary}


def nvidia_smi_id(index: int, visible: str | None, uuid: str | None) -> str:
    """What `nvidia-smi --id=` names torch's cuda:index by: its UUID when torch gives one, else the index's entry
    of CUDA_VISIBLE_DEVICES (torch's index counts the visible GPUs only), else the index itself."""
    if uuid and re.fullmatch(r"(GPU-|MIG-)?[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", uuid):
        return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    entries = [entry.strip() for entry in (visible or "").split(",") if entry.strip()]
    return entries[index] if index < len(entries) else str(index)


def smi_id_of(device: Any) -> str:
    if device.type != "cuda":
        return "0"
    import torch

    index = device.index or 0
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return nvidia_smi_id(index, os.environ.get("CUDA_VISIBLE_DEVICES"), str(uuid) if uuid else None)


class GpuSampler:
    """nvidia-smi's GPU utilisation (%) and memory used (MiB) of one GPU every 0.5 s, in the background. Best
    effort: a sampler that does not start or stop cleanly never fails the measurement it accompanies."""

    STOP_WAIT_S = 2.0

    def __init__(self, gpu_id: str = "0") -> None:
        self.gpu_id, self.lines, self.process = gpu_id, [], None
        self.reader: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        smi = shutil.which("nvidia-smi")
        if smi is not None:
            try:
                self.process = subprocess.Popen(
                    [
                        smi,
                        f"--id={self.gpu_id}",
                        "--query-gpu=utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits",
                        "-lms",
                        "500",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            except OSError:
                return self
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=self.STOP_WAIT_S)
        except subprocess.TimeoutExpired:  # an nvidia-smi stuck in the driver: not the measurement's problem
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=self.STOP_WAIT_S)
        if self.reader is not None:
            self.reader.join(timeout=self.STOP_WAIT_S)

    def summary(self) -> dict[str, Any] | None:
        return gpu_samples(self.lines) if self.process is not None else None


def gpu_samples(lines: list[str]) -> dict[str, Any] | None:
    """Mean and max utilisation and the max memory of nvidia-smi's `utilization.gpu, memory.used` lines."""
    samples = []
    for line in list(lines):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 2 and all(field.replace(".", "", 1).isdigit() for field in fields):
            samples.append((float(fields[0]), float(fields[1])))
    if not samples:
        return None
    utilisation = [u for u, _ in samples]
    return {
        "samples": len(samples),
        "utilisation_mean_pct": round(sum(utilisation) / len(utilisation), 1),
        "utilisation_max_pct": max(utilisation),
        "memory_max_mib": max(m for _, m in samples),
    }


def _decode_only(extractor: Any, videos: list[Path], workers: int) -> tuple[float, float]:
    """(seconds, amount) to decode and cut every video as the run does, `workers` at once, without the model:
    amount is sampled frames, or seconds of audio."""
    from benchmarks.bench_extract import decoded_chunks

    def decode(path: Path) -> float:
        windower, amount = extractor.windower(), 0.0
        for chunk, size in decoded_chunks(extractor, path):
            windower.push(chunk)
            amount += size
        windower.finish()
        return amount

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        amount = sum(pool.map(decode, videos))
    return time.perf_counter() - started, amount


def measure_preset(preset_name: str, work: Path, sizes: Sizes, videos: list[Path]) -> dict[str, Any]:
    """One preset's decode-only rate and extraction run on these videos."""
    import torch

    from benchmarks.bench_extract import batched
    from extract.models import ExtractorOptions, build_extractor
    from extract.models.presets import get_preset

    device = torch.device(sizes.device)
    options = ExtractorOptions(device, work / "weights", sizes.precision, verify_weights=False)
    extractor = build_extractor(get_preset(preset_name), options)
    decode_s, amount = _decode_only(extractor, videos, sizes.workers)
    out = work / "stores" / preset_name / "features.h5"
    shutil.rmtree(out.parent, ignore_errors=True)  # a fresh store: the run would skip what a previous one made
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with GpuSampler(smi_id_of(device)) as sampler:
        run_s = batched(extractor, videos, out, sizes.batch_size, sizes.workers)
    unit = "frames" if extractor.frame_sampling is not None else "audio_s"
    ratio = (amount / run_s) / (amount / decode_s)
    return {
        "preset": preset_name,
        "device": str(device),
        "precision": sizes.precision,
        "videos": len(videos),
        "unit": unit,
        "run_s": round(run_s, 2),
        "clips_per_s": round(len(videos) / run_s, 2),
        f"{unit}_per_s": round(amount / run_s, 1),
        f"decode_only_{unit}_per_s": round(amount / decode_s, 1),
        "share_of_decode_rate": round(ratio, 2),
        "bound": "decode" if ratio >= DECODE_BOUND else "compute",
        "gpu": sampler.summary(),
        "peak_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
    }


def extract_step(work: Path, sizes: Sizes, result_file: Path) -> dict[str, Any]:
    """Every preset in this one process (one CUDA start-up), the full ones first; the result file is rewritten
    after each preset, so a timeout keeps what was measured. A preset that fails is recorded and the next runs."""
    videos = sorted((work / "videos").glob("*.mp4"))
    if not videos:
        raise RuntimeError(f"no videos in {work / 'videos'}: the videos step did not make them")
    result: dict[str, Any] = {"presets": {}, "failed": {}}
    for name in (*FULL_PRESETS, *BRIEF_PRESETS):
        chosen = videos if name in FULL_PRESETS else videos[:BRIEF_VIDEOS]
        try:
            result["presets"][name] = measure_preset(name, work, sizes, chosen)
        except Exception as error:
            result["failed"][name] = f"{type(error).__name__}: {error}"[:300]
        result_file.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if result["failed"]:
        raise RuntimeError("; ".join(f"{name}: {why}" for name, why in result["failed"].items()))
    return result


def precision_step(work: Path, sizes: Sizes, result_file: Path) -> dict[str, Any]:
    import torch

    from benchmarks.bench_extract import precision_check
    from extract.core.cpu import native_bf16

    device = torch.device(sizes.device)
    # A CPU runs fp16 requests in fp32, and bf16 only where it has bf16 instructions (refused elsewhere).
    precisions = ["fp16", "bf16"] if device.type == "cuda" or native_bf16() else ["fp16"]
    cosines = {}
    for name in EXTRACTORS:
        found = precision_check(
            name, work / "weights", device, precisions, sizes.precision_seconds, sizes.precision_units
        )
        cosines[name] = {precision: round(cosine, 6) for precision, cosine in found.items()}
    note = "" if device.type == "cuda" else f"CPU: {', '.join(precisions)} checked (fp16 runs fp32 on a CPU)"
    return {"device": str(device), "inputs": "synthetic", "min_cosine_to_fp32": cosines, "note": note}


def train_step_step(work: Path, sizes: Sizes, result_file: Path) -> dict[str, Any]:
    import torch

    from benchmarks.bench_img import measure

    device = torch.device(sizes.device)
    args = argparse.Namespace(
        batch=sizes.train_batch, video_len=sizes.train_video_len, query_len=12, repeats=sizes.train_repeats
    )
    timings = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if dtype is torch.float16 and device.type != "cuda":
            continue
        seconds, peak = measure(device, dtype, args)
        timings[name] = {"ms_per_step": round(seconds * 1000, 1), "peak_mib": round(peak)}
    return {"device": str(device), "batch": sizes.train_batch, "video_len": sizes.train_video_len, **timings}


def ddp_step(work: Path, sizes: Sizes, result_file: Path) -> dict[str, Any]:
    import torch

    if sizes.device == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": f"needs 2 GPUs ({torch.cuda.device_count()} visible)"}
    from tests.img_cli import run_img_train, tiny_dataset
    from tests.test_img_distributed import INVARIANT, flat_metrics, torchrun

    folder = work / "ddp"
    shutil.rmtree(folder, ignore_errors=True)
    data = tiny_dataset(folder / "data")
    args = [*data.cli_data_args(), "--config", data.folder / "tiny.toml", "--no-progress", "--device", sizes.device]
    started = time.perf_counter()
    one = run_img_train(*args, "--out", folder / "one")
    one_s = time.perf_counter() - started
    if one.returncode != 0:
        raise RuntimeError(f"1 process: {one.stderr.strip().splitlines()[-1:]}")
    started = time.perf_counter()
    two = torchrun(2, *args, "--out", folder / "two")
    two_s = time.perf_counter() - started
    if two.returncode != 0:
        raise RuntimeError(f"2 processes: {two.stderr.strip().splitlines()[-1:]}")
    a, b = (torch.load(folder / run / "last.pt", weights_only=True)["state_dict"] for run in ("one", "two"))
    relative = max(
        float((b[name] - w).norm() / w.norm().clamp_min(1e-30))
        for name, w in a.items()
        if w.is_floating_point() and not INVARIANT.search(name)
    )
    ma, mb = flat_metrics(folder / "one" / "metrics.jsonl"), flat_metrics(folder / "two" / "metrics.jsonl")
    differing = [
        key
        for x, y in zip(ma, mb, strict=True)
        for key in x
        if "mean_audio_importance" not in key and x[key] != y.get(key)
    ]
    return {
        "device": sizes.device,
        "one_process_s": round(one_s, 1),
        "two_processes_s": round(two_s, 1),
        "max_weight_relative_difference": relative,
        "metrics_differing": differing,
        "same_run": relative <= 1e-5 and not differing,
    }


# Time boxes: their sum is near the deadline, which caps each step's at what is left (a GPU worth little time).
STEPS = [
    Step("setup", 45, setup_step),
    Step("cuda-tests", 90, cuda_tests_step),
    Step("train-step", 40, train_step_step),
    Step("precision", 40, precision_step),
    Step("videos", 30, videos_step, torch=False),
    Step("extract", 120, extract_step),
    Step("ddp", 60, ddp_step),
]


# --- the orchestration --------------------------------------------------------------------------------------


def result_path(work: Path, name: str) -> Path:
    return work / "results" / f"{name}.json"


def run_step(step: Step, work: Path, dry_run: bool, timeout: float, weights_dir: Path | None = None) -> dict[str, Any]:
    """One step in its own process group, killed at the timeout; its result (what it saved before a timeout)
    or why there is none."""
    result_file = result_path(work, step.name)
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--work", str(work)]
    command += ["--dry-run"] if dry_run else []
    command += ["--weights-dir", str(weights_dir)] if weights_dir is not None else []
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=ROOT
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        entry: dict[str, Any] = {
            "status": "timeout",
            "seconds": round(time.perf_counter() - started, 1),
            "timeout_s": round(timeout),
        }
        if result_file.exists():  # what the step measured before it was killed
            entry["result"] = json.loads(result_file.read_text(encoding="utf-8"))
        return entry
    seconds = round(time.perf_counter() - started, 1)
    if process.returncode != 0 or not result_file.exists():
        tail = [line for line in output.strip().splitlines() if line.strip()][-3:]
        entry = {"status": "failed", "seconds": seconds, "exit_status": process.returncode, "error": tail}
        if result_file.exists():
            entry["result"] = json.loads(result_file.read_text(encoding="utf-8"))
        return entry
    result = json.loads(result_file.read_text(encoding="utf-8"))
    return {"status": "skipped" if "skipped" in result else "ok", "seconds": seconds, "result": result}


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check ({'dry run, CPU' if report['dry_run'] else 'CUDA'}), {report['started']}", ""]
    lines += [f"{report['host']}; total {report['total_s']} s of a {report['deadline_s']} s deadline", ""]
    lines += ["| step | status | s | summary |", "|---|---|---:|---|"]
    for name, entry in report["steps"].items():
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | {_summary(entry)} |")
    extractions = list(report["steps"].get("extract", {}).get("result", {}).get("presets", {}).values())
    if extractions:
        lines += [
            "",
            "| preset | videos | clips/s | frames or audio s /s | decode-only /s | share | bound | "
            "GPU util mean/max % | GPU MiB max | peak alloc MiB |",
            "|---|---:|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for e in extractions:
            gpu = e["gpu"] or {}
            util = f"{gpu.get('utilisation_mean_pct', '-')}/{gpu.get('utilisation_max_pct', '-')}"
            lines.append(
                f"| {e['preset']} | {e['videos']} | {e['clips_per_s']} | {e[e['unit'] + '_per_s']} {e['unit']} | "
                f"{e['decode_only_' + e['unit'] + '_per_s']} | {e['share_of_decode_rate']} | {e['bound']} | {util} | "
                f"{gpu.get('memory_max_mib', '-')} | {e['peak_allocated_mib'] or '-'} |"
            )
    precision = report["steps"].get("precision", {}).get("result")
    if precision:
        lines += ["", "| extractor | fp16 min cosine | bf16 min cosine |", "|---|---:|---:|"]
        for name, values in precision["min_cosine_to_fp32"].items():
            lines.append(f"| {name} | {values['fp16']} | {values.get('bf16', 'not on this CPU')} |")
    training = report["steps"].get("train-step", {}).get("result")
    if training:
        lines += ["", "| IMG training step | ms/step | peak MiB |", "|---|---:|---:|"]
        for name in ("fp32", "bf16", "fp16"):
            if name in training:
                lines.append(f"| {name} | {training[name]['ms_per_step']} | {training[name]['peak_mib']} |")
    return "\n".join(lines) + "\n"


def _summary(entry: dict[str, Any]) -> str:
    if entry["status"] == "timeout":
        kept = entry.get("result", {}).get("presets")
        return f"killed after {entry['timeout_s']} s" + (f"; measured {', '.join(kept)}" if kept else "")
    if entry["status"] == "failed":
        return "; ".join(entry.get("error", [])).replace("|", "/")[:200]
    if entry["status"] == "not run":
        return entry["reason"]
    result = entry["result"]
    if "presets" in result:
        bounds = [f"{name} {value['bound']}-bound" for name, value in result["presets"].items()]
        return ", ".join(bounds)
    for key in ("skipped", "summary", "same_run"):
        if key in result:
            return f"{key}: {result[key]}" if key != "summary" else str(result[key])
    return ""


def run_preflight(dry_run: bool) -> tuple[int, list[str]]:
    """The preflight in its own process (importing torch may hang on a broken driver): exit status and lines."""
    command = [sys.executable, str(Path(__file__).resolve()), "--preflight"] + (["--dry-run"] if dry_run else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PREFLIGHT_TIMEOUT_S, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return 2, [f"preflight: did not finish in {PREFLIGHT_TIMEOUT_S:.0f} s (importing torch or CUDA hangs?)"]
    return done.returncode, (done.stdout + done.stderr).strip().splitlines()


def orchestrate(args: argparse.Namespace) -> int:
    out: Path = args.out
    work = out / "work"
    (work / "results").mkdir(parents=True, exist_ok=True)
    chosen = [s for s in STEPS if not args.steps or s.name in args.steps]
    unknown = set(args.steps or ()) - {s.name for s in STEPS}
    if unknown:
        print(f"gpu_check: unknown steps {', '.join(sorted(unknown))}; known: {', '.join(s.name for s in STEPS)}")
        return 2
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "deadline_s": args.deadline_s,
        "steps": {},
    }
    preflight_started = time.perf_counter()
    status, lines = run_preflight(args.dry_run)
    print("\n".join(lines), flush=True)
    report["preflight"] = {
        "ok": status == 0,
        "seconds": round(time.perf_counter() - preflight_started, 1),
        "lines": lines,
    }
    report["total_s"] = report["preflight"]["seconds"]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if status != 0:
        print(f"gpu_check: the preflight failed: no step was run (report in {out / 'gpu_check.json'})")
        return 2
    started = time.perf_counter()  # the deadline is the steps'; the preflight has its own time box
    for step in chosen:
        remaining = args.deadline_s - (time.perf_counter() - started)
        if remaining < min(MIN_STEP_S, args.timeout_s or MIN_STEP_S):
            entry: dict[str, Any] = {"status": "not run", "reason": f"out of time ({remaining:.0f} s left)"}
        else:
            timeout = min(args.timeout_s or step.timeout_s, remaining)
            print(f"gpu_check: {step.name} (at most {timeout:.0f} s)", flush=True)
            entry = run_step(step, work, args.dry_run, timeout, args.weights_dir)
        print(f"gpu_check: {step.name}: {entry['status']} {_summary(entry)}", flush=True)
        report["steps"][step.name] = entry
        report["total_s"] = round(time.perf_counter() - started, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (out / "gpu_check.md").write_text(render_markdown(report), encoding="utf-8")
    print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} ({report['total_s']} s)")
    return 0 if all(e["status"] in ("ok", "skipped") for e in report["steps"].values()) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny inputs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "gpu-check")
    parser.add_argument(
        "--deadline-s", type=float, default=DEADLINE_S, help=f"all steps within this ({DEADLINE_S:.0f})"
    )
    parser.add_argument("--steps", type=lambda s: s.split(","), default=None, help="only these steps, in order")
    parser.add_argument("--timeout-s", type=float, default=None, help="one timeout for every step")
    parser.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="a folder holding the goldens' weights as tests/conftest.py's write_published_weights wrote them: "
        "setup links them instead of writing them again",
    )
    parser.add_argument("--preflight", action="store_true", help="only check the machine (exit 2 when short)")
    parser.add_argument("--print-wheels", action="store_true", help="NAME==VERSION of the wheels a GPU node lacks")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.weights_dir is not None and not args.weights_dir.is_dir():
        parser.error(f"--weights-dir {args.weights_dir} is not a folder: give the folder that holds the weights")
    if args.print_wheels:
        print("\n".join(wheels_to_carry()))
        return
    if args.preflight:
        lines, problems = preflight(args.dry_run)
        print("\n".join(f"preflight: {line}" for line in lines))
        print(
            "\n".join(
                f"preflight: MISSING {line}"
                if not line.startswith(" ") and not line.startswith("how")
                else f"preflight: {line}"
                for line in problems
            )
        )
        sys.exit(2 if problems else 0)
    if args.step is None:
        sys.exit(orchestrate(args))
    sizes = replace(DRY if args.dry_run else GPU, weights_from=args.weights_dir)
    step = next(s for s in STEPS if s.name == args.step)
    if sizes.threads and step.torch:
        import torch

        torch.set_num_threads(sizes.threads)
    target = result_path(args.work, step.name)
    result = step.run(args.work, sizes, target)
    target.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
