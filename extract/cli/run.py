"""`img-extract run` (the default command: `img-extract VIDEOS --out feats.h5`): videos in, an HDF5 feature store
with provenance out. The flags map onto extract/run/request.py's ExtractionRequest; the library does the rest."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from extract.cli.options import AUDIO_HOP, AUDIO_WINDOW, FPS, STALL_SECONDS, resume_option
from extract.core.console import (
    EXIT_INTERRUPTED,
    EXIT_STOPPED,
    EXIT_TERMINATED,
    fail,
    is_sigterm,
    setup_logging,
    sigterm_raises,
)
from extract.core.errors import ImgVmrError, StoreWriteError
from extract.core.options import precision_option, weights_dir_option
from extract.models.presets import PRESETS

if TYPE_CHECKING:
    from extract.run import RunStopped

log = logging.getLogger(f"img_vmr.{__name__}")


def _preset_table() -> str:
    return "\n".join(f"  {name:<8} {preset.description}" for name, preset in PRESETS.items())


@click.command(
    "run",
    epilog="\b\nPresets (--features):\n" + _preset_table() + "\n\n\b\n"
    "Exit status: 0 every track extracted, 1 some tracks failed (the others are kept), 2 usage error,\n"
    "3 the run stopped (e.g. the disk is full), 130 / 143 interrupted by Ctrl-C / SIGTERM; finished videos\n"
    "are committed in every case and the last line says how many.\n"
    "Re-running the same command resumes: only the missing tracks are computed, committed ones are kept.",
)
@click.argument("videos", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Feature store to create or extend (parts go to OUT.parts/ beside it).",
)
@click.option(
    "--features", default="clip", show_default=True, help="Comma-separated presets to extract (see the list below)."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--batch-size",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Model inputs per forward pass, filled across videos: frames (CLIP), windows (I3D, PANNs, VGGish; "
    "I3D takes at most 4 per pass on CPU).",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Videos decoded in parallel (each by its own ffmpeg process), per local worker; the Ray engine runs one "
    "decode task per free CPU of the cluster.",
)
@click.option(
    "--fps", type=FPS, default=None, help="Frame sampling rate for visual presets, 0.001 to 240 (default: preset's)."
)
@click.option(
    "--decoder",
    type=click.Choice(["ffmpeg", "decord"]),
    default=None,
    help="Frame decoder (default: the preset's). decord seeks but ignores rotation and needs ~0.9 GB; "
    "rotated or non-mp4 files always go through ffmpeg.",
)
@click.option(
    "--audio-window", type=AUDIO_WINDOW, default=None, help="PANNs window in seconds, 0.31 to 10 (default 1.0)."
)
@click.option(
    "--audio-hop",
    type=AUDIO_HOP,
    default=None,
    help="PANNs hop between windows in seconds, 0.01 to the window (default 0.5).",
)
@weights_dir_option()
@click.option(
    "--trust-weights",
    is_flag=True,
    help="Accept files in --weights-dir whose sha256 differs from the published one (converted or test weights); "
    "the sha256 is still recorded in provenance.",
)
@click.option(
    "--clip-model",
    default=None,
    help="CLIP model: Hugging Face id or saved model folder (default openai/clip-vit-base-patch32; offline, "
    "found as --weights-dir DIR/clip-vit-base-patch32).",
)
@precision_option("fp32")
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "openvino"]),
    default="auto",
    show_default=True,
    envvar="IMG_VMR_BACKEND",
    help="What runs the models: torch, or OpenVINO on the CPU (converted from the same torch models once, cached "
    'beside the weights; pip install -e ".[openvino]"). auto: OpenVINO on a CPU where installed, torch on a GPU. '
    "fp32 features of both agree within the golden tolerances and may share a store. Default from "
    "$IMG_VMR_BACKEND.",
)
@resume_option("tracks", "extracts everything again")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Also retry the tracks that failed in an earlier run, and extract truncated videos again.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Extract at most N videos this run.")
@click.option(
    "--commit-every",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Videos per committed part: a crash loses at most this many finished videos.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine (threads, and one process per device with --devices); ray: a Ray cluster "
    '(decode tasks on its CPUs, one model actor per GPU; pip install -e ".[ray]").',
)
@click.option(
    "--devices",
    default=None,
    help="Local engine on several GPUs: one worker process per device, e.g. 0,1,2,3 or all (cpu entries run "
    "CPU workers). Each worker commits its own parts; the index is built once at the end.",
)
@click.option(
    "--ray-address",
    default=None,
    help="Ray cluster to join (default $RAY_ADDRESS; neither: a local one on this machine).",
)
@click.option(
    "--stall-seconds",
    type=STALL_SECONDS,
    default=None,
    help="Seconds without progress before giving up, 30 to 86400 (default 360): a decoder (a Ray decode task) "
    "silent this long loses its video, which fails (with --engine ray, starts again); a Ray run in which "
    "nothing progresses this long (a lost node left no room for its tasks or its model actor) stops, saying what "
    "it waited for, and commits the finished videos.",
)
@click.option(
    "--shard",
    default=None,
    help="i/N: extract only the videos whose id hashes to shard i of N (stable across runs and machines), "
    "e.g. one Slurm array task each; join the shard stores with `img-extract merge`.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (tracebacks of failures).")
def run_command(**flags: Any) -> None:
    """Extract features of every video in VIDEOS into the store OUT.

    VIDEOS is a folder (scanned recursively; a video's id is its path relative to the folder without the
    extension) or a manifest: .jsonl lines {"video_id": ..., "path": ...} or a .csv with a
    video_id,path header (relative paths are relative to the manifest).

    \b
    Examples:
      img-extract videos/ --out feats.h5
      img-extract videos/ --out feats.h5 --fps 0.5 --device cuda:0 --batch-size 256
      img-extract manifest.jsonl --out feats.h5 --retry-failed
      img-extract videos/ --out feats.h5 --devices all             # one worker process per GPU
      img-extract manifest.jsonl --out feats-3.h5 --shard 3/8     # job 3 of 8; then img-extract merge
      img-extract manifest.jsonl --out feats.h5 --engine ray --ray-address auto
    """
    from extract.run import RunStopped
    from extract.run.request import ExtractionRequest, extract

    setup_logging("img-extract", flags.pop("verbose"))
    if flags["no_progress"] or not sys.stderr.isatty():  # transformers' "Loading weights" bar too (read at import)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    request = ExtractionRequest(progress=not flags.pop("no_progress"), **flags)
    with sigterm_raises():
        try:
            summary = extract(request)
        except RunStopped as stopped:
            _stopped(stopped, request.out)
        except ImgVmrError as error:
            log.debug("usage error", exc_info=True)
            fail(str(error))
        except KeyboardInterrupt as interrupt:  # before any video was extracted
            fail(f"{_interruption(interrupt)} before any video was extracted; nothing was committed", _code(interrupt))
        except Exception as error:  # a bug before the run began: one line, the traceback with -v
            log.debug("run failed", exc_info=True)
            fail(f"the run could not start: {type(error).__name__}: {error} (-v shows the traceback)", EXIT_STOPPED)
    sys.exit(summary.exit_code)


def _interruption(interrupt: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if is_sigterm(interrupt) else "interrupted"


def _code(interrupt: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if is_sigterm(interrupt) else EXIT_INTERRUPTED


def _stopped(stopped: RunStopped, out: Path) -> None:
    """The last line of a run that stopped: why, and what it really committed."""
    from extract.store import parts_dir

    cause, committed = stopped.cause, stopped.summary.committed()
    if isinstance(cause, KeyboardInterrupt):
        fail(f"{_interruption(cause)}; {committed}; re-run the same command to resume", _code(cause))
    if isinstance(cause, StoreWriteError):
        fail(f"{cause}; {committed}; make room, then re-run the same command to resume", EXIT_STOPPED)
    log.debug("run failed", exc_info=cause)
    fail(
        f"the run stopped: {type(cause).__name__}: {cause}; {committed} (details in {parts_dir(out) / 'extract.log'})",
        EXIT_STOPPED,
    )
