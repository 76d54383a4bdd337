"""`img-extract datasets stats NAME`: statistics of a dataset's annotations (Table 8, Figure 9), no features needed.

It lives beside `img-extract manifest NAME` (both read a dataset's annotations by name and nothing else), not in
img-eval, which is one command whose first word is a CHECKPOINT: a subcommand there would make `img-eval stats`
ambiguous with a checkpoint file named so.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import click

from extract.core.console import fail, setup_logging
from extract.core.errors import ImgVmrError, writing
from extract.core.files import write_atomically
from manifests.registry import DATASETS

log = logging.getLogger(f"img_vmr.{__name__}")
PLOT_FORMATS = ("png", "svg", "pdf")


@click.group("datasets")
def datasets_group() -> None:
    """What the datasets' annotations hold (no features needed)."""


@datasets_group.command(
    "stats",
    epilog="\b\nDatasets:\n"
    + "\n".join(f"  {name:<13} {manifest.description}" for name, manifest in DATASETS.items())
    + "\n\n\b\nExit status: 0 done, 2 usage error or unreadable annotations, 3 --plot could not be written.",
)
@click.argument("name")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with the annotation files (default $IMG_DATA_DIR or ~/.cache/img-vmr/annotations).",
)
@click.option(
    "--store",
    "stores",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="For a custom .jsonl without durations: the feature store(s) whose videos' durations fill them in.",
)
@click.option("--split", "splits", multiple=True, help="Only these splits (repeatable; default all).")
@click.option(
    "--plot",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the distributions (moment duration, ratio, video duration, words per query) per split as a "
    "figure (.png, .svg or .pdf; Figure 9).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics (and histograms) as JSON.")
def stats_command(
    name: str,
    data_dir: Path | None,
    stores: tuple[Path, ...],
    splits: tuple[str, ...],
    plot: Path | None,
    as_json: bool,
) -> None:
    """Statistics of dataset NAME (or of a custom queries .jsonl) per split.

    \b
    Per split and for all: queries, videos, vocabulary size, and the mean, std, quartiles, min and max of the
    moment duration, the moment-to-video ratio, the video duration and the words per query.

    \b
    Examples:
      img-extract datasets stats charades-sta --plot charades.png
      img-extract datasets stats my_queries.jsonl --store feats.h5 --json
    """
    from manifests.stats import dataset_stats, histograms, stats_table

    setup_logging("img-extract")
    if plot is not None and plot.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        fail(f"--plot {plot}: name a .png, .svg or .pdf file")
    try:
        records = _records(name, data_dir, stores)
    except ImgVmrError as error:
        fail(str(error))
        return
    available = list(dict.fromkeys(record.split for record in records))
    unknown = [split for split in splits if split not in available]
    if unknown:
        fail(f"--split {unknown[0]}: {name} has the splits {', '.join(available)}")
    if splits:
        records = [record for record in records if record.split in splits]
    stats = dataset_stats(records)
    if as_json:
        by_split: dict[str, list] = {}
        for record in records:
            by_split.setdefault(record.split, []).append(record)
        payload = {
            "dataset": name,
            "splits": stats,
            "histograms": {split: histograms(members, edges_from=records) for split, members in by_split.items()},
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(f"{name}\n{stats_table(stats)}")
    if plot is not None:
        try:
            with writing(f"--plot {plot}", plot.parent):
                plot.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(plot, _figure_bytes(name, records, plot.suffix.lower().lstrip(".")))
        except ImgVmrError as error:
            fail(str(error), 3)
        log.info("wrote %s", plot)


def _records(name: str, data_dir: Path | None, stores: tuple[Path, ...]) -> list:
    from extract.core.errors import UsageError
    from manifests.custom import read_custom
    from manifests.registry import load_dataset

    if name in DATASETS:
        return load_dataset(name, data_dir).records
    if not name.endswith(".jsonl"):
        raise UsageError(f"dataset {name!r}: use one of {', '.join(DATASETS)} or a .jsonl file of your queries")
    if not Path(name).is_file():
        raise UsageError(f"{name}: no such file")
    durations = None
    if stores:
        from extract.store import FeatureStore, video_durations

        durations = {}
        for path in stores:
            if not FeatureStore.exists(path):
                raise UsageError(f"--store {path}: no feature store there (img-extract writes one with --out)")
            with FeatureStore(path) as store:
                durations.update(video_durations(store))
    records, _ = read_custom(Path(name), durations)
    return records


def _figure_bytes(name: str, records: list, fmt: str) -> bytes:
    """Four histograms (one per distribution), one outline per split."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from manifests.stats import DISTRIBUTIONS, histograms

    by_split: dict[str, list] = {}
    for record in records:
        by_split.setdefault(record.split, []).append(record)
    figure = Figure(figsize=(14, 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(DISTRIBUTIONS))
    for split, members in by_split.items():
        for axis, histogram in zip(axes, histograms(members, edges_from=records).values(), strict=True):
            counts = histogram["counts"]
            share = [100 * c / max(1, sum(counts)) for c in counts]
            axis.stairs(share, histogram["edges"], label=f"{split} ({len(members)})")
    for axis, label in zip(axes, DISTRIBUTIONS.values(), strict=True):
        axis.set_xlabel(label)
        axis.set_ylabel("% of the split")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"{name}: annotation statistics")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=120)
    return buffer.getvalue()
