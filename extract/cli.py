"""img-extract: videos in, an HDF5 feature store with provenance out.

The CLI maps flags onto RunConfig / presets / ExtractorOptions and nothing else reads flags.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from extract import __version__
from extract.cli_common import (
    AUDIO_HOP,
    AUDIO_WINDOW,
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_TERMINATED,
    FPS,
    ROW_SECONDS,
    STALL_SECONDS,
    OneLineErrors,
    fail,
    is_sigterm,
    resume_option,
    setup_logging,
    sigterm_raises,
    weights_dir_option,
)
from extract.errors import ImgVmrError, StoreWriteError, UsageError
from extract.presets import PRESETS
from extract.store_cli import compact_command, merge_command
from extract.text_cli import manifest_command, text_command

if TYPE_CHECKING:
    from extract.run import RunStopped

log = logging.getLogger("img_vmr.extract")


class _DefaultToRun(OneLineErrors):
    """`img-extract VIDEOS --out X` runs extraction; named subcommands (inspect) work as usual."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _preset_table() -> str:
    return "\n".join(f"  {name:<8} {preset.description}" for name, preset in PRESETS.items())


@click.group(cls=_DefaultToRun, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="img-extract")
def main() -> None:
    """Extract video and audio features for video moment retrieval into an HDF5 feature store.

    \b
    img-extract VIDEOS --out feats.h5 [options]   extract (same as `img-extract run ...`)
    img-extract inspect feats.h5                  what a store holds, with provenance and failures
    img-extract doctor                            what this machine gives img-vmr (ffmpeg, torch, GPUs, weights)
    """


@main.command(
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
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default="fp32",
    show_default=True,
    help="fp16/bf16: autocast on CUDA. On a CPU, bf16 runs where the cores have bf16 instructions (avx512_bf16, "
    "amx_bf16; refused elsewhere) and fp16 runs fp32. bf16 features are a recipe of their own: they never join "
    "fp32 rows in one store.",
)
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

    setup_logging(flags["verbose"])
    with sigterm_raises():
        try:
            summary = _run(**flags)
        except RunStopped as stopped:
            _stopped(stopped, flags["out"])
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


def _run(
    videos: Path,
    out: Path,
    features: str,
    device: str,
    batch_size: int,
    workers: int,
    fps: float | None,
    decoder: str | None,
    audio_window: float | None,
    audio_hop: float | None,
    weights_dir: Path | None,
    trust_weights: bool,
    clip_model: str | None,
    precision: str,
    backend: str,
    resume: bool,
    retry_failed: bool,
    limit: int | None,
    commit_every: int,
    stall_seconds: float | None,
    engine: str,
    devices: str | None,
    ray_address: str | None,
    shard: str | None,
    no_progress: bool,
    verbose: bool,
) -> Any:
    from extract.devices import resolve_device
    from extract.models import ExtractorOptions
    from extract.presets import get_preset
    from extract.run import ExtractionRun, RunConfig
    from extract.run.engine_devices import parse_devices
    from extract.run.shard import Shard
    from extract.sources import find_videos

    if no_progress or not sys.stderr.isatty():  # transformers' "Loading weights" bar too (read when it is imported)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    names = [name.strip() for name in features.split(",") if name.strip()]
    if not names:
        raise UsageError("--features is empty; name at least one preset, e.g. --features clip")
    presets = []
    for name in dict.fromkeys(names):
        preset = get_preset(name)
        if preset.frames is not None:
            preset = preset.with_overrides(fps=fps, decoder=decoder)
        if preset.model == "clip-vision" and clip_model:
            preset = preset.with_overrides(weights=clip_model)
        if "window_seconds" in preset.windowing:
            preset = preset.with_audio_windows(audio_window, audio_hop)
        presets.append(preset)
    if (audio_window or audio_hop) and not any("window_seconds" in p.windowing for p in presets):
        raise UsageError("--audio-window/--audio-hop apply to windowed audio presets (panns); none was requested")
    sources = find_videos(videos)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UsageError(f"--out {out} should end in .h5 (the store's index file)")
    device_list = parse_devices(devices) if devices is not None else ()
    if device_list and device != "auto":
        raise UsageError("give --device (one) or --devices (several), not both")
    if engine == "ray" and (device_list or device.startswith("cuda:")):
        raise UsageError(
            f"--engine ray places one model actor on each GPU of the cluster: use --device auto, cuda or cpu "
            f"(not {'--devices' if device_list else '--device ' + device})"
        )
    if engine == "ray" or len(device_list) > 1:
        import torch

        resolved = torch.device("cpu")  # each worker or actor resolves its own device
    else:
        resolved = resolve_device(device_list[0] if device_list else device)
    options = ExtractorOptions(
        device=resolved,
        weights_dir=weights_dir,
        precision=precision,
        verify_weights=not trust_weights,
        backend=backend,
    )
    config = RunConfig(
        batch_size=batch_size,
        workers=workers,
        resume=resume,
        retry_failed=retry_failed,
        limit=limit,
        commit_every=commit_every,
        progress=not no_progress,
        shard=Shard.parse(shard) if shard is not None else None,
        engine=engine,
        devices=device_list if len(device_list) > 1 else (),
        ray_address=ray_address,
        ray_device=device,
        **({"stall_seconds": stall_seconds} if stall_seconds is not None else {}),
    )
    run = ExtractionRun(sources, out, presets, options, config)
    try:
        return run.run()  # models load once the store is locked
    finally:
        run.close()


@main.command("inspect")
@click.argument("store", type=click.Path(path_type=Path))
@click.option(
    "--videos",
    "max_videos",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Per-video lines to show (0 = all).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_command(store: Path, max_videos: int, as_json: bool) -> None:
    """Show what the feature store STORE holds: counts, feature kinds with provenance, failures, lengths."""
    from extract.inspect import describe, render

    setup_logging(False)
    try:
        report = describe(store)
    except ImgVmrError as error:
        fail(str(error))
    except Exception as error:  # an unexpected store: one line, the traceback in the debug log
        log.debug("inspect failed", exc_info=True)
        fail(f"cannot read {store}: {type(error).__name__}: {error}")
    click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else render(report, max_videos))


@main.group("weights")
def weights_group() -> None:
    """The published model files: list them, fetch them into the cache, verify their checksums."""


@weights_group.command("list")
@weights_dir_option()
def weights_list(weights_dir: Path | None) -> None:
    """Every published file the presets use, where it is found (or 'missing'), its URL and published checksum."""
    from extract.weights import REGISTRY, find_local

    for entry in REGISTRY.values():
        found = find_local(entry.name, weights_dir)
        checksums = ", ".join(f"{kind} {value}" for kind, value in entry.published_checksums().items())
        click.echo(f"{entry.name:<32} {'missing' if found is None else found}")
        click.echo(f"    {entry.layout}; presets: {', '.join(entry.used_by)}")
        click.echo(f"    {entry.url}")
        click.echo(f"    published checksum: {checksums or 'none'}")


@weights_group.command("fetch")
@click.argument("names", nargs=-1, required=True)
@weights_dir_option("Where to put them (default $IMG_WEIGHTS_DIR or ~/.cache/img-vmr).")
def weights_fetch(names: tuple[str, ...], weights_dir: Path | None) -> None:
    """Download published files NAMES (see `weights list`), verified, unless already there."""
    from extract.weights import default_weights_dir, fetch

    setup_logging(False)
    try:
        for name in names:
            click.echo(str(fetch(name, weights_dir or default_weights_dir())))
    except ImgVmrError as error:
        fail(str(error))


@weights_group.command("verify")
@click.argument("names", nargs=-1)
@weights_dir_option()
def weights_verify(names: tuple[str, ...], weights_dir: Path | None) -> None:
    """Check the local copies of NAMES (default: all that are present) against their published checksums.

    Prints 'ok' only when a published checksum was compared, 'present, no published checksum' for a file whose
    publisher gives none; exits 1 when a file is missing (when named) or contradicts its checksum.
    """
    from extract.weights import REGISTRY, find_local, registry_entry, verify

    setup_logging(False)
    bad = 0
    for name in names or tuple(REGISTRY):
        try:
            entry = registry_entry(name)
            path = find_local(name, weights_dir)
            if path is None:
                if names:
                    click.echo(f"{name}: missing", err=True)
                    bad += 1
                continue
            click.echo(f"{name}: {verify(path, entry).describe()} ({path})")
        except ImgVmrError as error:
            click.echo(f"img-extract: error: {error}", err=True)
            bad += 1
    sys.exit(EXIT_FAILURES if bad else EXIT_OK)


@main.command("export-img")
@click.option("--store", "store", required=True, type=click.Path(path_type=Path), help="Feature store to read.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Folder.")
@click.option("--visual", default=None, help="Visual feature kind to export (e.g. i3d-charades-vslnet, clip).")
@click.option("--audio", default=None, help="Audio feature kind to export (panns, or vggish-quantized as pickle).")
def export_command(store: Path, out: Path, visual: str | None, audio: str | None) -> None:
    """Write features in the layout the IMG authors' code reads (one .npy per video, shape json files,
    VGGish.pickle for quantised VGGish)."""
    from extract.interop import export_img

    setup_logging(False)
    if visual is None and audio is None:
        fail("name at least one of --visual and --audio")
    try:
        counts = export_img(store, out, visual, audio)
    except ImgVmrError as error:
        fail(str(error))
    except OSError as error:
        where = error.filename or out
        fail(f"cannot write {where} ({error.strerror or error}); choose a writable --out folder")
    for name, count in counts.items():
        log.info("exported %s for %d videos into %s", name, count, out)


@main.command("import-img")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Feature store to write.")
@click.option("--feature", required=True, help="Name to store the features under (e.g. i3d-released).")
@click.option(
    "--row-seconds",
    type=ROW_SECONDS,
    default=None,
    help="Seconds per row when known, 0.001 to 3600 (e.g. 0.96 for VGGish); otherwise timestamps are unknown (NaN).",
)
def import_command(source: Path, out: Path, feature: str, row_seconds: float | None) -> None:
    """Import released features: a folder of .npy / .npz (key `features`) files, or a VGGish.pickle
    (only dicts of numpy arrays are unpickled)."""
    from extract.interop import import_img

    setup_logging(False)
    try:
        count = import_img(source, out, feature, row_seconds)
    except ImgVmrError as error:
        fail(str(error))
    log.info("imported %d videos from %s into %s as %r", count, source, out, feature)


@main.command("doctor", epilog="Exit status: 0 nothing required is broken, 1 something is (the line says what).")
@weights_dir_option()
@click.option("--verify", is_flag=True, help="Hash every present weights file against its published checksums.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_command(weights_dir: Path | None, verify: bool, as_json: bool) -> None:
    """Check what this machine gives img-vmr: ffmpeg, torch and its CUDA build, the GPUs (and GPUs the driver
    sees that torch cannot use), the published weights, the Hugging Face models and cache, offline switches.

    \b
    Fast: weights are checked by presence and size (every run verifies the files it loads); --verify hashes
    them. Missing weights or models are notes: they are downloaded on first use when online.
    """
    from extract.doctor import render, run_checks

    setup_logging(False)
    checks = run_checks(weights_dir, verify)
    if as_json:
        click.echo(json.dumps([check.as_json() for check in checks], indent=2))
    else:
        click.echo(render(checks))
    sys.exit(EXIT_FAILURES if any(check.status == "broken" for check in checks) else EXIT_OK)


main.add_command(manifest_command)
main.add_command(text_command)
main.add_command(compact_command)
main.add_command(merge_command)

if __name__ == "__main__":
    main()
