"""An experiment's result: mean ± std over seeds of every metric of every branch, per setting, as Markdown, CSV
and JSON in DIR, and for a sweep of one key a plot of each metric against the swept value.

The metrics are read from the img-eval --json reports generically (each branch's {name: number} dict, and the
report's top-level measurements such as mean_audio_importance with the fused branch): a metric added to img-eval
appears here without a change. std is the sample standard deviation (n - 1) over the seeds that finished.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extract.core.console import format_probability
from extract.core.files import write_atomically
from pipelines.experiment import Experiment, format_value
from pipelines.experiment_runs import Run

TABLE_NAME = "results"  # DIR/results.md, results.csv, results.json
PLOT_NAME = "sweep.png"
FUSED = "fused"  # the branch a report's own numbers (mean_audio_importance) are shown with
REPORT_LEVEL = "all"  # ... when the report has no fused branch
IMPORTANCE = "mean_audio_importance"  # a probability: its cells print "< 0.001", not 0.00


@dataclass
class CellResult:
    """One setting's runs and, per branch and metric, the value of each finished seed."""

    label: str
    values: dict[str, Any]
    folder: str
    runs: dict[int, str] = field(default_factory=dict)  # finished seed -> its run folder (relative to DIR)
    missing: list[int] = field(default_factory=list)  # seeds without a report yet
    metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # branch -> metric -> per seed

    def summary(self, branch: str, metric: str) -> tuple[float, float, int]:
        values = self.metrics.get(branch, {}).get(metric, [])
        if not values:
            return math.nan, math.nan, 0
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values)


def collect(experiment: Experiment, runs: list[Run], out: Path) -> tuple[list[CellResult], list[str], list[str]]:
    """(one result per setting, the branches, the metrics) from the runs' reports."""
    results = {cell.index: CellResult(cell.label, dict(cell.values), cell.folder) for cell in experiment.cells}
    branches: dict[str, None] = {}
    metrics: dict[str, None] = {}
    for run in runs:
        result = results[run.cell.index]
        if run.state() != "done":
            result.missing.append(run.seed)
            continue
        report = json.loads(run.report.read_text(encoding="utf-8"))
        result.runs[run.seed] = run.folder.relative_to(out).as_posix()
        for branch, numbers in _numbers(report).items():
            branches.setdefault(branch)
            for name, value in numbers.items():
                metrics.setdefault(name)
                result.metrics.setdefault(branch, {}).setdefault(name, []).append(value)
    return list(results.values()), list(branches), list(metrics)


def _numbers(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every branch's {metric: value} (a branch may nest them under "metrics"), and the report's own numbers."""
    numbers: dict[str, dict[str, float]] = {}
    for branch, values in report.get("branches", {}).items():
        if isinstance(values, dict) and isinstance(values.get("metrics"), dict):
            values = values["metrics"]
        if isinstance(values, dict):
            numbers[branch] = {name: float(v) for name, v in values.items() if _is_number(v)}
    # the report's own measurements (mean_audio_importance: the fused branch's weight) are floats; its counts and
    # settings (queries, seed, batch_size) are whole numbers
    top = {name: value for name, value in report.items() if isinstance(value, float)}
    if top:
        numbers.setdefault(FUSED if FUSED in numbers else REPORT_LEVEL, {}).update(top)
    return numbers


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shown(mean: float, std: float, probability: bool = False) -> str:
    """A cell: mean ± std of percentages (2 decimals), or of a probability (3; "< 0.001" rather than 0.000)."""
    if math.isnan(mean):
        return "–"
    if probability:
        shown = format_probability(mean)
        return shown if math.isnan(std) else f"{shown} ± {format_probability(std)}"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def markdown(experiment: Experiment, results: list[CellResult], branches: list[str], metrics: list[str]) -> str:
    keys = list(experiment.grid) or ["setting"]
    lines = [
        f"# {experiment.path.name}: mean ± std over seeds {', '.join(map(str, experiment.seeds))}",
        "",
        "Each setting links to its run folders (img-train run + eval.json per seed); std is the sample standard "
        "deviation (n - 1); n is the number of seeds finished.",
        "",
        "| " + " | ".join([*keys, "branch", "n", *metrics, "runs"]) + " |",
        "|" + "---|" * (len(keys) + 3 + len(metrics)),
    ]
    for result in results:
        for branch in branches:
            if branch not in result.metrics and result.metrics:
                continue
            settings = [format_value(result.values[key]) for key in keys] if experiment.grid else ["base recipe"]
            settings[0] = f"[{settings[0]}]({result.folder})"
            cells = [
                _shown(*result.summary(branch, metric)[:2], probability=metric == IMPORTANCE) for metric in metrics
            ]
            n = max((result.summary(branch, metric)[2] for metric in metrics), default=0)
            links = " ".join(f"[{seed}]({folder})" for seed, folder in result.runs.items())
            missing = f" (missing: {', '.join(map(str, result.missing))})" if result.missing else ""
            lines.append("| " + " | ".join([*settings, branch, str(n), *cells, links + missing]) + " |")
    return "\n".join(lines) + "\n"


def table_csv(experiment: Experiment, results: list[CellResult], branches: list[str], metrics: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = list(experiment.grid)
    writer.writerow(
        [*keys, "branch", "n", *(f"{m} {part}" for m in metrics for part in ("mean", "std")), "folder", "missing"]
    )
    for result in results:
        for branch in branches:
            if branch not in result.metrics and result.metrics:
                continue
            row: list[Any] = [format_value(result.values[key]) for key in keys] + [branch]
            stats = [result.summary(branch, metric) for metric in metrics]
            row.append(max((s[2] for s in stats), default=0))
            row += [f"{value:.4f}" if not math.isnan(value) else "" for s in stats for value in s[:2]]
            row += [result.folder, " ".join(map(str, result.missing))]
            writer.writerow(row)
    return buffer.getvalue()


def table_json(experiment: Experiment, results: list[CellResult], branches: list[str], metrics: list[str]) -> str:
    def number(value: float) -> float | None:
        return None if math.isnan(value) else value

    settings = []
    for result in results:
        summary = {
            branch: {
                metric: {
                    "mean": number(result.summary(branch, metric)[0]),
                    "std": number(result.summary(branch, metric)[1]),
                    "n": len(values),
                    "values": values,
                }
                for metric, values in result.metrics[branch].items()
            }
            for branch in branches
            if branch in result.metrics
        }
        settings.append(
            {
                "setting": result.values,
                "label": result.label,
                "folder": result.folder,
                "runs": {str(seed): folder for seed, folder in result.runs.items()},
                "missing_seeds": result.missing,
                "branches": summary,
            }
        )
    payload = {
        "experiment": str(experiment.path),
        "seeds": list(experiment.seeds),
        "grid": {key: list(values) for key, values in experiment.grid.items()},
        "std": "sample standard deviation (n - 1) over the finished seeds",
        "settings": settings,
    }
    return json.dumps(payload, indent=2) + "\n"


def plot_sweep(
    experiment: Experiment, results: list[CellResult], branches: list[str], metrics: list[str], path: Path
) -> bool:
    """For a grid of one key: each metric against the swept value, one line per branch, std as error bars.
    False (nothing written) for other grids."""
    if len(experiment.grid) != 1 or not metrics:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (key,) = experiment.grid
    swept = [result.values[key] for result in results]
    numeric = all(_is_number(value) for value in swept)
    positions = [float(v) for v in swept] if numeric else list(range(len(swept)))
    columns = min(4, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows), squeeze=False)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        for branch in branches:
            stats = [result.summary(branch, metric) for result in results]
            if all(math.isnan(s[0]) for s in stats):
                continue
            errors = [0.0 if math.isnan(s[1]) else s[1] for s in stats]
            axis.errorbar(positions, [s[0] for s in stats], yerr=errors, marker="o", capsize=3, label=branch)
        axis.set_title(metric)
        axis.set_xlabel(key)
        if not numeric:
            axis.set_xticks(positions, [format_value(v) for v in swept])
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(metrics) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    figure.suptitle(f"{experiment.path.name}: mean ± std over {len(experiment.seeds)} seeds")
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)
    return True


def write_tables(experiment: Experiment, runs: list[Run], out: Path) -> list[Path]:
    """results.md / .csv / .json (and sweep.png for a 1-D grid) in `out`; the files written."""
    results, branches, metrics = collect(experiment, runs, out)
    written = []
    for suffix, text in (
        ("md", markdown(experiment, results, branches, metrics)),
        ("csv", table_csv(experiment, results, branches, metrics)),
        ("json", table_json(experiment, results, branches, metrics)),
    ):
        path = out / f"{TABLE_NAME}.{suffix}"
        write_atomically(path, text)
        written.append(path)
    if plot_sweep(experiment, results, branches, metrics, out / PLOT_NAME):
        written.append(out / PLOT_NAME)
    return written
