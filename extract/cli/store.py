"""The commands on feature stores: `img-extract inspect` (what a store holds), `compact` (its many small parts
into a few large ones), `merge` (shard stores into one), `export-img` and `import-img` (the IMG authors' layout)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from extract.cli.options import PART_SIZE, ROW_SECONDS
from extract.core.console import EXIT_FAILED, EXIT_OK, fail, setup_logging
from extract.core.errors import ImgVmrError

log = logging.getLogger(f"img_vmr.{__name__}")

EXIT_DAMAGED = EXIT_FAILED  # some parts are damaged: left as they are, reported


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.command("compact")
@click.argument("store", type=click.Path(path_type=Path))
@PART_SIZE
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def compact_command(store: Path, part_mib: int, no_progress: bool) -> None:
    """Merge the parts of the feature store STORE into a few large ones.

    \b
    A run commits a part every --commit-every videos or minute, so long runs leave thousands; readers then
    open thousands of files. Compaction rewrites the same content (latest metadata, every current track with
    its provenance, failures per track) as parts of at most --part-size, then removes the old ones. Readers
    keep working meanwhile and never see a half state; it holds the store's writer lock, so a run started
    meanwhile is refused with one line (and compact is refused during a run). Damaged parts are left in
    place and reported (exit status 1).

    \b
    Example:
      img-extract compact feats.h5
    """
    from extract.store.compact import compact

    setup_logging("img-extract")
    try:
        report = compact(store, part_mib * 2**20, progress=not no_progress)
    except ImgVmrError as error:
        fail(str(error))
    if report.merged:
        log.info(
            "merged %d parts (%s) into %d (%s): %d videos, %d failure records",
            len(report.merged),
            _megabytes(report.bytes_before),
            len(report.written),
            _megabytes(report.bytes_after),
            report.videos,
            report.failures,
        )
    else:
        log.info("%s has nothing to merge (%d videos in one part or none)", store, report.videos)
    for part, reason in report.damaged:
        log.warning("damaged part left as it is: %s (%s)", part, reason)
    sys.exit(EXIT_DAMAGED if report.damaged else EXIT_OK)


@click.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="The merged store to write.")
@PART_SIZE
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def merge_command(shards: tuple[Path, ...], out: Path, part_mib: int, no_progress: bool) -> None:
    """Join the stores SHARDS (written with --shard i/N) into the one store OUT.

    \b
    Every video's latest metadata, tracks (with their provenance) and failure records are copied into new parts
    of OUT and its index is built; the shards are left as they are. Shards whose features were made with
    different recipes are refused before anything is written; a shard still being written is refused with its
    writer's name. A video held by two shards comes from the last one listed. Shards of different N are refused;
    shards of the split not merged yet are named (merge them into OUT later). img-train also reads the shards
    directly (--features repeated), without a merge.

    \b
    Example:
      img-extract merge feats-0.h5 feats-1.h5 feats-2.h5 feats-3.h5 --out feats.h5
    """
    from extract.store.merge import merge_stores

    setup_logging("img-extract")
    try:
        report = merge_stores(list(shards), out, part_mib * 2**20, progress=not no_progress)
    except ImgVmrError as error:
        fail(str(error))
    log.info(
        "merged %d shard store%s into %s: %d videos, %d failure records, in %d parts",
        len(report.shards),
        "s" * (len(report.shards) != 1),
        report.out,
        report.videos,
        report.failures,
        len(report.written),
    )
    if report.missing_shards:
        log.warning(
            "%s holds no videos of shard %s yet; when they are done: img-extract merge SHARD.h5 ... --out %s",
            report.out,
            report.missing_shards,
            report.out,
        )
    for store in report.unrecorded:
        log.info("%s records no --shard (a store not written by a shard run): completeness not checked", store)
    if report.duplicates:
        log.warning("%d videos were in more than one shard; each comes from the last shard listed", report.duplicates)
    for part, reason in report.damaged:
        log.warning("damaged part skipped: %s (%s); its videos are not in %s", part, reason, out)
    sys.exit(EXIT_DAMAGED if report.damaged else EXIT_OK)


@click.command("inspect")
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
    from extract.store.inspect import describe, render

    setup_logging("img-extract")
    try:
        report = describe(store)
    except ImgVmrError as error:
        fail(str(error))
    except Exception as error:  # an unexpected store: one line, the traceback in the debug log
        log.debug("inspect failed", exc_info=True)
        fail(f"cannot read {store}: {type(error).__name__}: {error}")
    click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else render(report, max_videos))


@click.command("export-img")
@click.option("--store", "store", required=True, type=click.Path(path_type=Path), help="Feature store to read.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Folder.")
@click.option("--visual", default=None, help="Visual feature kind to export (e.g. i3d-charades-vslnet, clip).")
@click.option("--audio", default=None, help="Audio feature kind to export (panns, or vggish-quantized as pickle).")
def export_command(store: Path, out: Path, visual: str | None, audio: str | None) -> None:
    """Write features in the layout the IMG authors' code reads (one .npy per video, shape json files,
    VGGish.pickle for quantised VGGish)."""
    from extract.store.interop import export_img

    setup_logging("img-extract")
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


@click.command("import-img")
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
    """Import released features: a folder of .npy / .npz (key `features`) / .pt files (one [T, D] tensor each,
    as the IMG authors' InternVideo2 features), a VGGish.pickle (only dicts of numpy arrays are unpickled), or one
    .pt file of video id -> tensor. PyTorch files are read with torch.load(weights_only=True): tensors and plain
    containers only."""
    from extract.store.interop import import_img

    setup_logging("img-extract")
    try:
        count = import_img(source, out, feature, row_seconds)
    except ImgVmrError as error:
        fail(str(error))
    log.info("imported %d videos from %s into %s as %r", count, source, out, feature)
