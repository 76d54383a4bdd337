"""`img-extract compact` (a store's many small parts into a few large ones) and `img-extract merge` (shard stores
into one), registered in extract/cli/run.py."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from extract.cli.options import PART_SIZE
from extract.core.console import EXIT_FAILED, EXIT_OK, fail, setup_logging
from extract.core.errors import ImgVmrError

log = logging.getLogger("img_vmr.extract")

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
