"""img-eval --sweep KEY=V1,V2,...: one checkpoint or several (--compare) evaluated at every value of one audio
perturbation setting (the paper's Figure 4: IMG against IMG w/o AIP as the share of noisy audio grows), written as
one table (Markdown, CSV, JSON) and one plot (PNG and SVG): R1@0.5, R1@0.7 and the mean predicted audio importance
of the fused branch against the value, a line per checkpoint (and per split when several are asked).

    sweep = parse_sweep("audio-noise-fraction=0,0.2,0.4,0.6,0.8,1")
    rows = run_sweep(EvaluationRequest(Path("runs/img/best.pt")), [Path("runs/no-aip/best.pt")], sweep)
    write_sweep(Path("sweep/"), sweep, rows)
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from extract.core.errors import UsageError, writing
from extract.core.files import write_atomically
from img_model.data.audio_perturbation import MAX_NOISE_STD, AudioPerturbation
from img_model.evaluate.evaluation import EvaluationRequest, evaluate_checkpoint

# sweep key -> (AudioPerturbation field, highest value)
SWEEP_KEYS: dict[str, tuple[str, float]] = {
    "audio-noise-fraction": ("noise_fraction", 1.0),
    "audio-missing-fraction": ("missing_fraction", 1.0),
    "audio-noise-std": ("noise_std", MAX_NOISE_STD),
}
MAX_SWEEP_VALUES = 50
PLOTTED = ("R1@0.5", "R1@0.7", "mean_importance")
COLUMNS = (
    "checkpoint",
    "split",
    "value",
    "queries",
    "R1@0.3",
    "R1@0.5",
    "R1@0.7",
    "mIoU",
    "mean_importance",
    "mean_importance_perturbed",
    "mean_importance_clean",
)


@dataclass(frozen=True)
class Sweep:
    key: str  # a SWEEP_KEYS name
    values: tuple[float, ...]

    @property
    def field(self) -> str:
        return SWEEP_KEYS[self.key][0]


def parse_sweep(text: str) -> Sweep:
    """KEY=V1,V2,... (UsageError, one line, for an unknown key, a value that is no finite number in range, or over
    MAX_SWEEP_VALUES values)."""
    key, equals, listed = text.partition("=")
    key = key.strip()
    if not equals or key not in SWEEP_KEYS:
        raise UsageError(f"--sweep {text!r}: use KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)}")
    high = SWEEP_KEYS[key][1]
    values = []
    for item in listed.split(","):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"--sweep {key}: {item.strip()!r} is not a number") from None
        if not math.isfinite(value) or not 0 <= value <= high:
            raise UsageError(f"--sweep {key}: {item.strip()!r} is not a finite number from 0 to {high:g}")
        values.append(value)
    if not 1 <= len(values) <= MAX_SWEEP_VALUES:
        raise UsageError(f"--sweep {key}: give 1 to {MAX_SWEEP_VALUES} values, not {len(values)}")
    return Sweep(key, tuple(values))


def checkpoint_labels(paths: list[Path]) -> list[str]:
    """A short distinct name per checkpoint: its run folder's name for RUN/best.pt and RUN/last.pt, else its stem."""
    labels = []
    for path in paths:
        label = path.parent.name if path.name in ("best.pt", "last.pt") and path.parent.name else path.stem
        while label in labels:
            label = f"{label}'"
        labels.append(label)
    return labels


def run_sweep(base: EvaluationRequest, compare: list[Path], sweep: Sweep) -> list[dict[str, Any]]:
    """One row per checkpoint (base's, then `compare`), split and value: the fused branch's metrics and the mean
    importance of all, of the perturbed (noisy or missing) and of the clean queries."""
    perturbation = base.audio_perturbation or AudioPerturbation()
    if sweep.key == "audio-noise-std" and perturbation.noise_fraction == 0:
        raise UsageError("--sweep audio-noise-std: give --audio-noise-fraction F above 0 (the queries made noisy)")
    paths = [base.checkpoint, *compare]
    rows = []
    for path, label in zip(paths, checkpoint_labels(paths), strict=True):
        for value in sweep.values:
            request = replace(base, checkpoint=path, audio_perturbation=replace(perturbation, **{sweep.field: value}))
            for report in evaluate_checkpoint(request).reports:
                summary = report.context.get("audio_perturbation") or {}
                perturbed = [
                    (summary.get(f"{kind}_queries", 0), summary.get(f"mean_importance_{kind}"))
                    for kind in ("noisy", "missing")
                ]
                count = sum(n for n, _ in perturbed)
                fused = report.branches["fused"]
                rows.append(
                    {
                        "checkpoint": label,
                        "checkpoint_path": str(path),
                        "split": report.split,
                        "key": sweep.key,
                        "value": value,
                        "queries": report.queries,
                        **{name: fused[name] for name in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")},
                        "mean_importance": report.mean_importance,
                        "mean_importance_perturbed": (
                            sum(n * m for n, m in perturbed if m is not None) / count if count else None
                        ),
                        "mean_importance_clean": summary.get("mean_importance_clean", report.mean_importance),
                        "branches": report.branches,
                    }
                )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def sweep_markdown(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    header = [sweep.key if c == "value" else c for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def sweep_csv(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([sweep.key if c == "value" else c for c in COLUMNS])
    writer.writerows([["" if row[c] is None else row[c] for c in COLUMNS] for row in rows])
    return out.getvalue()


def sweep_figure(sweep: Sweep, rows: list[dict[str, Any]]) -> Any:
    """R1@0.5, R1@0.7 and the mean importance against the value, a line per checkpoint (and split)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.6), layout="constrained")
    axes = figure.subplots(1, len(PLOTTED))
    lines = list(dict.fromkeys((row["checkpoint"], row["split"]) for row in rows))
    several_splits = len({split for _, split in lines}) > 1
    for axis, metric in zip(axes, PLOTTED, strict=True):
        for checkpoint, split in lines:
            points = [r for r in rows if (r["checkpoint"], r["split"]) == (checkpoint, split)]
            label = f"{checkpoint} ({split})" if several_splits else checkpoint
            axis.plot([r["value"] for r in points], [r[metric] for r in points], marker="o", label=label)
        axis.set_xlabel(sweep.key)
        axis.set_ylabel("mean audio importance" if metric == "mean_importance" else f"fused {metric} (%)")
        axis.grid(alpha=0.3)
    axes[0].legend()
    return figure


def write_sweep(out: Path, sweep: Sweep, rows: list[dict[str, Any]]) -> list[Path]:
    """sweep.md, sweep.csv, sweep.json, sweep.png and sweep.svg in `out` (each written whole or not at all)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    written = []
    with writing(f"--sweep-out {out}", out):
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (
            ("sweep.md", sweep_markdown(sweep, rows)),
            ("sweep.csv", sweep_csv(sweep, rows)),
            ("sweep.json", json.dumps({"key": sweep.key, "values": list(sweep.values), "rows": rows}, indent=2)),
        ):
            write_atomically(out / name, text)
            written.append(out / name)
        figure = sweep_figure(sweep, rows)
        FigureCanvasAgg(figure)
        for suffix in ("png", "svg"):
            buffer = io.BytesIO()
            figure.savefig(buffer, format=suffix, dpi=120)
            write_atomically(out / f"sweep.{suffix}", buffer.getvalue())
            written.append(out / f"sweep.{suffix}")
    return written
