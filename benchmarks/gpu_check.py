"""Everything that needs a CUDA GPU, in one time-boxed run: benchmarks/gpu_check.sh calls this.

Steps, each in its own process with a timeout (a hung CUDA call or decoder is killed, recorded as a timeout, and
the next step runs), all within one deadline (default 450 s; a step that cannot start in time is recorded as
skipped):

    setup           videos (ffmpeg), the goldens' weights in the published layouts and a CLIP with random
                    weights (ViT-B/32 shape; tiny in --dry-run), saved where the presets look for them: nothing
                    is downloaded, so a GPU node without internet works; the doctor's report of the machine
    cuda-tests      pytest -m cuda: the tests skipped without a GPU (reason "needs a CUDA GPU", tests/conftest.py)
    extract:PRESET  for each preset: the decode-only rate (the run's decoder, `workers` videos at once) and the
                    extraction run (ExtractionRun, fp16 autocast on CUDA): clips/s, frames/s (or seconds of audio
                    per second), GPU utilisation and memory sampled by nvidia-smi every 0.5 s, peak memory
                    allocated; decode-bound when the run reaches 85% of the decode-only rate, else compute-bound
    precision       per extractor, the per-row cosine of fp16 and bf16 features against fp32 on the same inputs
    train-step      IMG training step (forward, loss, backward; Charades configuration, B=16, Lv=128): median
                    time and peak memory in fp32, bf16 and fp16 autocast
    ddp             with two GPUs: the tiny synthetic run on 1 process and on 2 (torchrun, NCCL); every metric
                    compared and the weights' relative difference (skipped with one GPU)

Results: OUT/gpu_check.json and OUT/gpu_check.md (rewritten after every step, so a killed check leaves what it
measured). --dry-run runs the same steps on the CPU with tiny inputs (2 videos of 2 s, a tiny CLIP, a small
training batch, the DDP check on 2 gloo processes): CI runs it (tests/test_gpu_check.py).

    benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--deadline-s 450] [--steps setup,extract:clip,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the steps import benchmarks.* and tests.* from the checkout
    sys.path.insert(0, str(ROOT))
PRESET_NAMES = ("clip", "i3d-charades-vslnet", "i3d-anet-vslnet", "i3d", "vggish", "vggish-quantized", "panns")
EXTRACTORS = ("clip", "i3d-charades-vslnet", "vggish", "panns")  # one preset per model, for the precision check
DECODE_BOUND = 0.85  # the run reaches this share of the decode-only rate: decoding is what limits it
MIN_STEP_S = 20.0  # a step is not started with less time than this left before the deadline


@dataclass(frozen=True)
class Sizes:
    """How much work each step does: a GPU node's, or the dry run's tiny inputs on the CPU."""

    device: str
    videos: int
    seconds: float
    batch_size: int
    workers: int
    precision: str  # of the extraction runs
    clip_layers: int  # ViT-B/32 has 12
    train_batch: int
    train_video_len: int
    train_repeats: int
    threads: int  # torch CPU threads (0: torch's choice); a tiny model on busy cores is fastest on one


GPU = Sizes("cuda", 16, 8.0, 64, min(8, os.cpu_count() or 1), "fp16", 12, 16, 128, 5, 0)
DRY = Sizes("cpu", 1, 0.6, 8, 1, "fp32", 1, 2, 16, 1, 1)


@dataclass(frozen=True)
class Step:
    name: str
    timeout_s: float
    run: Callable[[Path, Sizes], dict[str, Any]]


# --- the steps (each runs in its own process: `gpu_check.py --step NAME`) ----------------------------------


def setup_step(work: Path, sizes: Sizes) -> dict[str, Any]:
    from benchmarks.fixtures import TINY_CLIP, VIT_B_32, make_videos, random_clip
    from extract.doctor import run_checks
    from tests.conftest import write_published_weights

    started = time.perf_counter()
    make_videos(work / "videos", sizes.videos, sizes.seconds)
    weights = work / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    write_published_weights(weights)
    # found as weights/clip-vit-base-patch32 by the clip preset
    random_clip(weights / "clip-vit-base-patch32", TINY_CLIP if sizes.clip_layers < 12 else VIT_B_32)
    checks = run_checks(weights)
    return {
        "videos": sizes.videos,
        "seconds_each": sizes.seconds,
        "setup_s": round(time.perf_counter() - started, 1),
        "machine": {check.name: check.lines for check in checks if check.name in ("ffmpeg", "torch", "cuda")},
        "broken": [check.name for check in checks if check.status == "broken"],
    }


def cuda_tests_step(work: Path, sizes: Sizes) -> dict[str, Any]:
    from tests.conftest import NEEDS_CUDA

    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if NEEDS_CUDA in p.read_text(encoding="utf-8"))
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-300:]
    if done.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m cuda: {summary}")
    return {"files": [Path(f).name for f in files], "summary": summary}


class GpuSampler:
    """nvidia-smi's GPU utilisation (%) and memory used (MiB) of one GPU every 0.5 s, in the background."""

    def __init__(self, index: int = 0) -> None:
        self.index, self.lines, self.process = index, [], None
        self.reader: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        smi = shutil.which("nvidia-smi")
        if smi is not None:
            self.process = subprocess.Popen(
                [smi, f"--id={self.index}", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "500"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=5)
            if self.reader is not None:
                self.reader.join(timeout=5)

    def summary(self) -> dict[str, Any] | None:
        return gpu_samples(self.lines) if self.process is not None else None


def gpu_samples(lines: list[str]) -> dict[str, Any] | None:
    """Mean and max utilisation and the max memory of nvidia-smi's `utilization.gpu, memory.used` lines."""
    samples = []
    for line in lines:
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


def extract_step(preset_name: str) -> Callable[[Path, Sizes], dict[str, Any]]:
    def run(work: Path, sizes: Sizes) -> dict[str, Any]:
        import torch

        from benchmarks.bench_extract import batched
        from extract.models import ExtractorOptions, build_extractor
        from extract.presets import get_preset

        device = torch.device(sizes.device)
        options = ExtractorOptions(device, work / "weights", sizes.precision, verify_weights=False)
        extractor = build_extractor(get_preset(preset_name), options)
        videos = sorted((work / "videos").glob("*.mp4"))
        decode_s, amount = _decode_only(extractor, videos, sizes.workers)
        out = work / "stores" / f"{preset_name}.h5"
        shutil.rmtree(out.parent, ignore_errors=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with GpuSampler(device.index or 0) as sampler:
            run_s = batched(extractor, work / "videos", out, sizes.batch_size, sizes.workers)
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
            "peak_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)
            if device.type == "cuda"
            else None,
        }

    return run


def precision_step(work: Path, sizes: Sizes) -> dict[str, Any]:
    import torch

    from benchmarks.bench_extract import precision_check

    device = torch.device(sizes.device)
    cosines = {}
    for name in EXTRACTORS:
        found = precision_check(name, work / "weights", device, ["fp16", "bf16"], work / "videos")
        cosines[name] = {precision: round(cosine, 6) for precision, cosine in found.items()}
    note = "" if device.type == "cuda" else "CPU: extractors run fp32 whatever the precision (the path is what runs)"
    return {"device": str(device), "min_cosine_to_fp32": cosines, "note": note}


def train_step_step(work: Path, sizes: Sizes) -> dict[str, Any]:
    import torch

    from benchmarks.bench_img import measure

    device = torch.device(sizes.device)
    args = argparse.Namespace(batch=sizes.train_batch, video_len=sizes.train_video_len, query_len=12,
                              repeats=sizes.train_repeats)  # fmt: skip
    timings = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if dtype is torch.float16 and device.type != "cuda":
            continue
        seconds, peak = measure(device, dtype, args)
        timings[name] = {"ms_per_step": round(seconds * 1000, 1), "peak_mib": round(peak)}
    return {"device": str(device), "batch": sizes.train_batch, "video_len": sizes.train_video_len, **timings}


def ddp_step(work: Path, sizes: Sizes) -> dict[str, Any]:
    import torch

    from tests.img_cli import run_img_train, tiny_dataset
    from tests.test_img_distributed import INVARIANT, flat_metrics, torchrun

    if sizes.device == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": f"needs 2 GPUs ({torch.cuda.device_count()} visible)"}
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
    differing = [key for x, y in zip(ma, mb, strict=True) for key in x if "mean_audio_importance" not in key
                 and x[key] != y.get(key)]  # fmt: skip
    return {
        "device": sizes.device,
        "one_process_s": round(one_s, 1),
        "two_processes_s": round(two_s, 1),
        "max_weight_relative_difference": relative,
        "metrics_differing": differing,
        "same_run": relative <= 1e-5 and not differing,
    }


STEPS = [
    Step("setup", 150, setup_step),
    Step("cuda-tests", 120, cuda_tests_step),
    *(Step(f"extract:{name}", 60, extract_step(name)) for name in PRESET_NAMES),
    Step("precision", 90, precision_step),
    Step("train-step", 60, train_step_step),
    Step("ddp", 120, ddp_step),
]


# --- the orchestration --------------------------------------------------------------------------------------


def run_step(step: Step, work: Path, dry_run: bool, timeout: float) -> dict[str, Any]:
    """One step in its own process group, killed at the timeout; its result or why there is none."""
    result_file = work / "results" / f"{step.name.replace(':', '-')}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--work", str(work)]
    command += ["--dry-run"] if dry_run else []
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, cwd=ROOT)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"status": "timeout", "seconds": round(time.perf_counter() - started, 1), "timeout_s": round(timeout)}
    seconds = round(time.perf_counter() - started, 1)
    if process.returncode != 0 or not result_file.exists():
        tail = [line for line in output.strip().splitlines() if line.strip()][-3:]
        return {"status": "failed", "seconds": seconds, "exit_status": process.returncode, "error": tail}
    result = json.loads(result_file.read_text(encoding="utf-8"))
    return {"status": "skipped" if "skipped" in result else "ok", "seconds": seconds, "result": result}


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check ({'dry run, CPU' if report['dry_run'] else 'CUDA'}), {report['started']}", ""]
    lines += [f"{report['host']}; total {report['total_s']} s of a {report['deadline_s']} s deadline", ""]
    lines += ["| step | status | s | summary |", "|---|---|---:|---|"]
    for name, entry in report["steps"].items():
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | {_summary(entry)} |")
    extractions = [e["result"] for n, e in report["steps"].items() if n.startswith("extract:") and "result" in e]
    if extractions:
        lines += [
            "",
            "| preset | clips/s | frames or audio s /s | decode-only /s | share | bound | GPU util mean/max % | "
            "GPU MiB max | peak alloc MiB |",
            "|---|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for e in extractions:
            gpu = e["gpu"] or {}
            util = f"{gpu.get('utilisation_mean_pct', '-')}/{gpu.get('utilisation_max_pct', '-')}"
            lines.append(
                f"| {e['preset']} | {e['clips_per_s']} | {e[e['unit'] + '_per_s']} {e['unit']} | "
                f"{e['decode_only_' + e['unit'] + '_per_s']} | {e['share_of_decode_rate']} | {e['bound']} | {util} | "
                f"{gpu.get('memory_max_mib', '-')} | {e['peak_allocated_mib'] or '-'} |"
            )
    precision = report["steps"].get("precision", {}).get("result")
    if precision:
        lines += ["", "| extractor | fp16 min cosine | bf16 min cosine |", "|---|---:|---:|"]
        for name, values in precision["min_cosine_to_fp32"].items():
            lines.append(f"| {name} | {values['fp16']} | {values['bf16']} |")
    training = report["steps"].get("train-step", {}).get("result")
    if training:
        lines += ["", "| IMG training step | ms/step | peak MiB |", "|---|---:|---:|"]
        for name in ("fp32", "bf16", "fp16"):
            if name in training:
                lines.append(f"| {name} | {training[name]['ms_per_step']} | {training[name]['peak_mib']} |")
    return "\n".join(lines) + "\n"


def _summary(entry: dict[str, Any]) -> str:
    if entry["status"] == "timeout":
        return f"killed after {entry['timeout_s']} s"
    if entry["status"] == "failed":
        return "; ".join(entry.get("error", [])).replace("|", "/")[:200]
    if entry["status"] == "not run":
        return entry["reason"]
    result = entry["result"]
    for key in ("skipped", "summary", "bound", "same_run"):
        if key in result:
            return f"{key}: {result[key]}" if key != "summary" else str(result[key])
    return ""


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
    started = time.perf_counter()
    for step in chosen:
        remaining = args.deadline_s - (time.perf_counter() - started)
        if remaining < min(MIN_STEP_S, args.timeout_s or MIN_STEP_S):
            entry: dict[str, Any] = {"status": "not run", "reason": f"out of time ({remaining:.0f} s left)"}
        else:
            timeout = min(args.timeout_s or step.timeout_s, remaining)
            print(f"gpu_check: {step.name} (at most {timeout:.0f} s)", flush=True)
            entry = run_step(step, work, args.dry_run, timeout)
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
    parser.add_argument("--deadline-s", type=float, default=450.0, help="all steps within this (default 450)")
    parser.add_argument("--steps", type=lambda s: s.split(","), default=None, help="only these steps, in order")
    parser.add_argument("--timeout-s", type=float, default=None, help="one timeout for every step")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step is None:
        sys.exit(orchestrate(args))
    sizes = DRY if args.dry_run else GPU
    if sizes.threads:
        import torch

        torch.set_num_threads(sizes.threads)
    step = next(s for s in STEPS if s.name == args.step)
    result = step.run(args.work, sizes)
    target = args.work / "results" / f"{step.name.replace(':', '-')}.json"
    target.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
