"""img-extract doctor: what this machine (or container) gives img-vmr, and whether anything required is broken.

Checks, each ok / note / BROKEN:

    ffmpeg    the binary the run uses (IMG_FFMPEG, imageio-ffmpeg's, or the system's): path and version
    torch     version, the CUDA version it was built for, cuDNN
    cuda      every GPU torch sees (name, memory, compute capability) and whether the build has kernels for
              it; GPUs the driver sees (nvidia-smi) that torch cannot use are BROKEN
    weights   each published file (img-extract weights list): present (size) or missing, in --weights-dir
              or the cache; `--verify` compares every present file with its published checksums
    models    the Hugging Face models of the presets and text encoders: a local folder, in the HF cache, or
              to be downloaded on first use; the HF cache folder, the offline switches, and whether the hub
              answers (offline when it cannot be reached: then nothing missing can be downloaded)

Fast by default (2 s of CPU here, mostly importing torch): it does not hash the weights (720 MB for all five
files), because every run already verifies each file it loads against its published checksums; `--verify`
hashes them (a few seconds per GB). Missing weights and models are notes, not failures: a command fetches
them on first use when online. Exit status 1 when something required is broken: no runnable ffmpeg, GPUs torch
cannot use, a file that contradicts its published checksum.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "note", "broken"]
FFMPEG_TIMEOUT_S = 10.0
HUB_TIMEOUT_S = 3.0  # a connection to the hub that has not opened by then counts as unreachable
NO_MODEL_NEEDED = "img-pipeline tour --out tour/ needs none"
HF_MODELS = {
    "clip preset": "openai/clip-vit-base-patch32",
    "text --embed clip": "openai/clip-vit-base-patch32",
    "text --embed bert": "bert-base-uncased",
}


@dataclass
class Check:
    name: str
    status: Status = "ok"
    lines: list[str] = field(default_factory=list)
    summary: str = ""  # what the last line adds about this check, if anything

    def add(self, line: str, status: Status = "ok") -> None:
        self.lines.append(line)
        if status == "broken" or (status == "note" and self.status == "ok"):
            self.status = status

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "lines": self.lines, "summary": self.summary}


def check_ffmpeg() -> Check:
    from extract.core.errors import UsageError
    from extract.media.ffmpeg import FFMPEG_ENV, ffmpeg_path

    check = Check("ffmpeg")
    try:
        path = ffmpeg_path()
    except UsageError as error:
        check.add(str(error), "broken")
        return check
    origin = f"${FFMPEG_ENV}" if os.environ.get(FFMPEG_ENV) else "imageio-ffmpeg" if "imageio" in path else "system"
    try:
        done = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as error:
        check.add(f"{path} ({origin}) does not run: {error}", "broken")
        return check
    first = done.stdout.splitlines()[0] if done.stdout else ""
    if done.returncode != 0 or not first.startswith("ffmpeg version"):
        check.add(f"{path} ({origin}) does not run: exit status {done.returncode}", "broken")
        return check
    check.add(f"{first.split()[2]} ({path}, {origin})")
    return check


def check_torch() -> Check:
    check = Check("torch")
    try:
        import torch
    except (ImportError, OSError) as error:
        check.add(f"torch does not import: {error}", "broken")
        return check
    cuda = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA (CPU only)"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    check.add(
        f"{torch.__version__}, {cuda}"
        + (f", cuDNN {cudnn}" if cudnn else "")
        + f", {torch.get_num_threads()} CPU threads"
    )
    return check


def check_cuda() -> Check:
    from extract.core.devices import cuda_report

    check = Check("cuda")
    report = cuda_report()
    if report.unusable:
        check.add(report.unusable, "broken")
    elif report.hidden:
        check.add(report.hidden, "note")
    elif not report.available:
        check.add("no CUDA GPU visible: commands run on the CPU", "note")
    for device in report.devices:
        line = (
            f"cuda:{device.index} {device.name}, {device.memory_gib:.0f} GiB, compute capability "
            f"{device.capability[0]}.{device.capability[1]}"
        )
        check.add(f"{line}: {device.problem}" if device.problem else line, "broken" if device.problem else "ok")
    if report.driver_gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        line = f"nvidia-smi: {len(report.driver_gpus)} GPU(s), driver {report.driver_gpus[0].driver}"
        if report.available and len(report.driver_gpus) != len(report.devices):
            line += f"; torch sees {len(report.devices)}" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else "")
        check.add(line)
    if report.available and report.arch_list:
        check.add(f"kernels for {' '.join(report.arch_list)}")
    return check


def check_weights(weights_dir: Path | None, verify: bool, unreachable: str | None = None) -> Check:
    """`unreachable`: why the hub cannot be reached (then the machine counts as offline), None when it answers."""
    from extract.core.download import offline
    from extract.core.errors import MissingWeightsError
    from extract.models.weights import REGISTRY, default_weights_dir, find_local, search_dirs, verify_weights

    check = Check("weights")
    folders = " then ".join(str(folder) for folder in search_dirs(weights_dir))
    cache = default_weights_dir()
    writable = _writable(cache)
    check.add(f"looked for in {folders}; cache {cache} {'writable' if writable else 'NOT writable'}")
    missing = []
    for name, entry in REGISTRY.items():
        path = find_local(name, weights_dir)
        if path is None:
            missing.append(name)
            check.add(f"{name}: missing (presets {', '.join(entry.used_by)})", "note")
            continue
        size = f"{path.stat().st_size / 1e6:,.0f} MB"
        if not verify:
            check.add(f"{name}: present, {size}, checksums not compared (--verify) ({path})")
            continue
        try:
            check.add(f"{name}: {verify_weights(path, entry).describe().split(';')[0]}, {size} ({path})")
        except MissingWeightsError as error:
            check.add(str(error), "broken")
    if missing and (offline() or unreachable):
        check.add(
            "offline: copy the missing files into the cache or --weights-dir (img-extract weights fetch "
            "NAME where there is internet)",
            "note",
        )
    elif missing:
        check.add(
            "missing files are downloaded into the cache on first use"
            + ("" if writable else ", which is not writable"),
            "note",
        )
    return check


def check_models(weights_dir: Path | None, unreachable: str | None = None) -> Check:
    """`unreachable`: why the hub cannot be reached (hub_unreachable), None when it answers or was not asked."""
    from huggingface_hub import constants

    from extract.core.download import OFFLINE_ENVS, offline
    from extract.core.errors import MissingWeightsError
    from extract.models.clip_vision import CLIP_MODEL_TYPES, WEIGHT_FILES, model_file, resolve_model_source

    check = Check("models")
    switches = [f"{name}={os.environ[name]}" for name in (*OFFLINE_ENVS, "TRANSFORMERS_OFFLINE") if name in os.environ]
    if offline():
        state = f"offline ({', '.join(switches)})"
    elif unreachable:
        state = f"offline: the hub {unreachable}"
    else:
        state = "online (downloads allowed)"
    if offline() or unreachable:
        check.summary = f"offline: models and weights not on disk cannot be downloaded ({NO_MODEL_NEEDED})"
    cache = Path(constants.HF_HUB_CACHE)
    check.add(f"Hugging Face cache {cache} ({'writable' if _writable(cache) else 'NOT writable'}); {state}")
    for use, model in HF_MODELS.items():
        try:
            source = resolve_model_source(model, weights_dir, CLIP_MODEL_TYPES if "clip" in use else ())
        except MissingWeightsError as error:
            check.add(f"{use}: {error}", "note")
            continue
        if Path(source).is_dir():
            check.add(f"{use}: {model} from {source}")
        elif model_file(source, WEIGHT_FILES) is not None:
            check.add(f"{use}: {model} in the Hugging Face cache")
        elif offline() or unreachable:
            check.add(
                f"{use}: {model} not available offline (save it into --weights-dir DIR/{model.split('/')[-1]})", "note"
            )
        else:
            check.add(f"{use}: {model} not cached; downloaded on first use", "note")
    return check


def _writable(folder: Path) -> bool:
    """Whether files can be created in folder (or in the nearest existing folder above it, which would hold it)."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def run_checks(weights_dir: Path | None = None, verify: bool = False) -> list[Check]:
    from extract.core.download import hub_unreachable, offline

    unreachable = None if offline() else hub_unreachable(HUB_TIMEOUT_S)
    return [
        check_ffmpeg(),
        check_torch(),
        check_cuda(),
        check_weights(weights_dir, verify, unreachable),
        check_models(weights_dir, unreachable),
    ]


def render(checks: list[Check]) -> str:
    marks = {"ok": "ok", "note": "note", "broken": "BROKEN"}
    lines = []
    for check in checks:
        for number, line in enumerate(check.lines):
            head = f"{check.name:<8} {marks[check.status]:<6}" if number == 0 else " " * 15
            lines.append(f"{head} {line}")
    broken = [check.name for check in checks if check.status == "broken"]
    last = f"broken: {', '.join(broken)}" if broken else "nothing required is broken"
    lines.append("; ".join([last, *(check.summary for check in checks if check.summary)]))
    return "\n".join(lines)
