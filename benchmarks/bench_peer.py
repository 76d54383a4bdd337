"""img-extract against v-iashin/video_features on the same videos: videos/s ratio and peak RSS per model.

    python benchmarks/bench_peer.py PEER_CHECKOUT [--models i3d,clip,vggish] [--videos 6] [--seconds 30] [--pairs 3]

PEER_CHECKOUT is a checkout of https://github.com/v-iashin/video_features (nothing of it is in this repository).
The script copies it into --workdir, writes random weights in each model's published layout on both sides (the
peer's I3D rgb file, its CLIP ViT-B/32 state dict as `custom`, torchvggish's files where its VGGish looks for
them; ours under the published names), and runs the peer in a virtual environment that reuses this one's
packages (the same torch build on both sides) plus the few the peer needs that this one lacks (omegaconf,
ftfy, regex, resampy, soundfile; scipy for its I3D, which imports RAFT), installed with pip once.

Recipes, as close as the peer allows: I3D RGB at 24 fps, 24-frame windows every 24 frames (the Charades recipe; the
peer's streams=rgb, stack_size=step_size=24), CLIP ViT-B/32 at 1 fps, VGGish 0.96-s examples. Each pair runs both
tools back to back in alternating order; every run is a fresh process whose whole process tree's peak RSS is
sampled (benchmarks/process_tree.py). Before the pairs, one untimed run of ours converts the model to OpenVINO
(once per weights, as a user's first run does; its peak RSS is printed on its own line). Printed per model: median
videos/s of each side, the ratio (ours / peer) per pair and its spread, and the peak RSS of each side (median,
min-max). Set the threads of both with --threads (default: the cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.process_tree import TreeRun, run_measured  # noqa: E402

PEER_PACKAGES = ["omegaconf", "ftfy", "regex", "resampy", "soundfile", "scipy"]
MODELS = ("i3d", "clip", "vggish")
OURS = {"i3d": "i3d-charades-vslnet", "clip": "clip", "vggish": "vggish-quantized"}


def peer_environment(workdir: Path) -> Path:
    """A venv whose site-packages also holds this interpreter's (a .pth line), plus what the peer lacks."""
    venv = workdir / "peer-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.check_output([str(python), "-c", "import site; print(site.getsitepackages()[0])"], text=True).strip()
    )
    (site / "img_vmr_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    missing = [
        name
        for name in PEER_PACKAGES
        if subprocess.run([str(python), "-c", f"import {name}"], capture_output=True).returncode
    ]
    if missing:  # checked at every start: a venv made by an earlier version of this script may lack one
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(site), *missing], check=True)
    return python


def peer_copy(checkout: Path, workdir: Path, python: Path) -> Path:
    """The peer's tree with random weights in its own layouts (made by its own model classes)."""
    peer = workdir / "peer"
    if not peer.exists():
        shutil.copytree(checkout, peer, ignore=shutil.ignore_patterns(".git", "*.pt", "*.pth"))
    code = """
import torch, sys
sys.path.insert(0, '.')
torch.manual_seed(0)
from models.i3d.i3d_src.i3d_net import I3D
torch.save(I3D(num_classes=400, modality='rgb').state_dict(), 'models/i3d/checkpoints/i3d_rgb.pt')
from models.clip.clip_src.model import CLIP
clip = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
import pathlib; pathlib.Path('models/clip/checkpoints').mkdir(exist_ok=True)
torch.save(clip.state_dict(), 'models/clip/checkpoints/CLIP-custom.pth')
from models.vggish.vggish_src.vggish_slim import VGGish
net = VGGish(pretrained=False, postprocess=False)
hub = pathlib.Path('models/vggish/hub/checkpoints')  # torch.hub's cache under the TORCH_HOME vggish_slim sets
hub.mkdir(parents=True, exist_ok=True)
torch.save(net.state_dict(), hub / 'vggish-10086976.pth')
torch.save({'pca_eigen_vectors': torch.eye(128), 'pca_means': torch.zeros(128, 1)},
           hub / 'vggish_pca_params-970ea276.pth')
"""
    if not (peer / "models" / "vggish" / "hub" / "checkpoints" / "vggish-10086976.pth").exists():
        subprocess.run([str(python), "-c", code], cwd=peer, check=True)
    return peer


def peer_command(python: Path, model: str, videos: list[Path], out: Path) -> list[str]:
    args = [
        f"feature_type={model}",
        "device=cpu",
        "on_extraction=save_numpy",
        f"output_path={out}",
        f"tmp_path={out / 'tmp'}",
        f"video_paths=[{','.join(map(str, videos))}]",
    ]
    if model == "i3d":
        args += ["streams=rgb", "stack_size=24", "step_size=24", "extraction_fps=24"]
    if model == "clip":
        args += ["model_name=custom", "extraction_fps=1"]
    return [str(python), "main.py", *args]


def our_command(model: str, videos: Path, out: Path, weights: Path, backend: str) -> list[str]:
    command = [
        str(Path(sys.executable).parent / "img-extract"),
        str(videos),
        "--out",
        str(out / "feats.h5"),
        "--features",
        OURS[model],
        "--weights-dir",
        str(weights),
        "--trust-weights",
        "--device",
        "cpu",
        "--backend",
        backend,
        "--no-progress",
    ]
    if model == "clip":
        command += ["--clip-model", str(weights / "clip-vit-base-patch32")]
    return command


def ffmpeg_folder(work: Path) -> Path:
    """A folder holding `ffmpeg`, the binary img-extract runs (the peer looks for it on PATH; without it every video
    fails inside the peer, which prints the error, goes on and exits 0)."""
    from extract.media.ffmpeg import ffmpeg_path

    folder = work / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "ffmpeg"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(ffmpeg_path())
    return folder


def one(command: list[str], out: Path, cwd: Path | None, env: dict[str, str], outputs: int | None = None) -> TreeRun:
    """One measured run; `outputs`: the .npy files the peer must have written (it exits 0 when every video failed)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run = run_measured(command, env=env, cwd=cwd)
    if run.returncode:
        raise SystemExit(f"{' '.join(command[:3])} ... failed ({run.returncode}):\n{run.stderr[-2000:]}")
    if outputs is not None and (written := len(list(out.rglob("*.npy")))) < outputs:
        raise SystemExit(f"the peer wrote {written} of {outputs} feature files:\n{run.stderr[-2000:]}")
    return run


def main() -> None:
    from benchmarks.bench_extract import random_weights
    from benchmarks.fixtures import VIT_B_32, make_videos, random_clip

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer_checkout", type=Path)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out") / "peer")
    args = parser.parse_args()
    work = args.workdir.resolve()
    videos = make_videos(work / f"videos-{args.videos}x{args.seconds:g}s", args.videos, args.seconds)
    weights = work / "weights"
    if not (weights / "rgb_charades.pt").exists():
        random_weights(weights)
    random_clip(weights / "clip-vit-base-patch32", VIT_B_32)
    python = peer_environment(work)
    peer = peer_copy(args.peer_checkout.resolve(), work, python)
    threads = str(args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env["PATH"] = f"{ffmpeg_folder(work)}{os.pathsep}{env.get('PATH', '')}"
    print(
        f"{len(videos)} videos x {args.seconds:g} s, {args.pairs} pairs, {threads} threads, ours --backend "
        f"{args.backend}; peer {peer}"
    )
    for model in args.models.split(","):
        # Untimed: our first run converts the model to OpenVINO (once per weights, cached beside them), as a user's
        # first run does; the pairs then measure the runs every later job makes. Its peak is printed on its own.
        first = one(
            our_command(model, videos[0].parent, work / "out" / "ours", weights, args.backend),
            work / "out" / "ours",
            None,
            env,
        )
        print(f"\n{model}: our first run (converts when the backend is OpenVINO): peak RSS {first.peak_rss_mb:.0f} MiB")
        runs: dict[str, list[TreeRun]] = {"ours": [], "peer": []}
        for pair in range(args.pairs):
            order = ("ours", "peer") if pair % 2 == 0 else ("peer", "ours")
            for side in order:
                out = work / "out" / side
                if side == "ours":
                    command = our_command(model, videos[0].parent, out, weights, args.backend)
                    runs[side].append(one(command, out, None, env))
                else:
                    command = peer_command(python, model, videos, out)
                    runs[side].append(one(command, out, peer, env, outputs=len(videos)))
        rates = {side: [len(videos) / r.wall_s for r in found] for side, found in runs.items()}
        ratios = [ours / peer for ours, peer in zip(rates["ours"], rates["peer"], strict=True)]
        print(
            f"{model}: videos/s ours {statistics.median(rates['ours']):.3f}, "
            f"peer {statistics.median(rates['peer']):.3f}; ratio per pair "
            f"{', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}x)"
        )
        for side, found in runs.items():
            peaks, anonymous = [r.peak_rss_mb for r in found], [r.peak_anonymous_mb for r in found]
            print(
                f"  peak RSS {side:<4} median {statistics.median(peaks):6.0f} MiB  "
                f"(min {min(peaks):.0f}, max {max(peaks):.0f}); anonymous part median "
                f"{statistics.median(anonymous):.0f} MiB (min {min(anonymous):.0f}, max {max(anonymous):.0f})"
            )


if __name__ == "__main__":
    main()
