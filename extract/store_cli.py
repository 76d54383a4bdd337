"""`img-extract compact`: merge a store's many small parts into a few large ones (registered in extract/cli.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from extract.errors import ImgVmrError

log = logging.getLogger("img_vmr.extract")

EXIT_OK, EXIT_DAMAGED = 0, 1


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.command("compact")
@click.argument("store", type=click.Path(path_type=Path))
@click.option(
    "--part-size",
    "part_mib",
    default=512,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest new part in MiB (each is built in memory before it is written).",
)
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
    from extract.cli_common import fail, setup_logging
    from extract.store_compact import compact

    setup_logging(False)
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
