"""`img-extract manifest NAME --videos DIR`: the video manifest of a dataset's videos found on disk."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from extract.core.console import EXIT_FAILED, EXIT_OK, fail, setup_logging
from extract.core.errors import ImgVmrError
from manifests.registry import DATASETS

log = logging.getLogger(f"img_vmr.{__name__}")

EXIT_MISSING = EXIT_FAILED  # some videos of the dataset are not on disk


def _dataset_table() -> str:
    return "\n".join(f"  {name:<13} {manifest.description}" for name, manifest in DATASETS.items())


@click.command(
    "manifest",
    epilog="\b\nDatasets:\n" + _dataset_table() + "\n\n\b\n"
    "Exit status: 0 every video found, 1 some missing (the manifest lists the others), 2 usage error.",
)
@click.argument("name")
@click.option(
    "--videos",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder holding the dataset's videos (searched recursively; file name without extension = video id).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Manifest to write.")
@click.option("--split", "splits", multiple=True, help="Only the videos of these splits (repeatable; default all).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with the annotation files (default $IMG_DATA_DIR or ~/.cache/img-vmr/annotations; fetched "
    "there on first use).",
)
def manifest_command(name: str, videos: Path, out: Path, splits: tuple[str, ...], data_dir: Path | None) -> None:
    """Write the video manifest of dataset NAME (or of a custom annotations .jsonl) for `img-extract`.

    \b
    Lists the dataset's videos found under --videos as JSONL {"video_id", "path"}; the ids without a file
    are written to OUT with the suffix .missing.txt.

    \b
    Examples:
      img-extract manifest charades-sta --videos Charades_v1_480/ --out charades.jsonl
      img-extract charades.jsonl --out feats.h5 --features i3d-charades-vslnet,panns
    """
    from manifests.video_manifest import match_video_files, write_manifest, write_missing

    setup_logging("img-extract")
    try:
        video_ids = _video_ids(name, splits, data_dir)
        found, missing = match_video_files(video_ids, videos)
        write_manifest(found, out)
    except ImgVmrError as error:
        fail(str(error))
    log.info("%s: %d of %d videos found under %s", out, len(found), len(found) + len(missing), videos)
    if missing:
        listing = out.with_suffix(".missing.txt")
        write_missing(missing, listing)
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        log.warning("%d videos missing on disk (%s); all listed in %s", len(missing), shown, listing)
    sys.exit(EXIT_MISSING if missing else EXIT_OK)


def _video_ids(name: str, splits: tuple[str, ...], data_dir: Path | None) -> list[str]:
    from extract.core.errors import UsageError
    from manifests.custom import read_rows
    from manifests.registry import load_dataset

    if name in DATASETS:
        records = [(r.split, r.video_id) for r in load_dataset(name, data_dir).records]
    elif name.endswith(".jsonl") and Path(name).is_file():
        records = [(row.split, row.video_id) for row in read_rows(Path(name))]
    else:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or a custom .jsonl file)")
    known = {split for split, _ in records}
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise UsageError(f"--split {unknown[0]}: {name} has the splits {', '.join(sorted(known))}")
    return [video_id for split, video_id in records if not splits or split in splits]
