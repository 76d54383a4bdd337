"""img-pipeline tour: the whole product in under a minute on a CPU, with no download, no GPU and no dataset.

The synthetic "audio matters" data (img_model/data/synthetic.py) stands in for extracted features: every video
hides one queried moment that shows only in its audio track (family `audio`), only in its visual track
(`visual`) or in both (`both`). The tour writes it through the real feature and text stores, trains the learning
check's small IMG on it with img-train, evaluates it with img-eval (metrics, per-query predictions, the HTML
report) and prints what the model learnt: per family, how often the fused, visual-only and audio-only branches
find the moment, and how much the model trusts the audio.

    OUT/tour.toml           the img-train --config of the tour (LEARNING_CHECK_CONFIG)
    OUT/data/               feats.h5, text.h5 and queries.jsonl (train and test splits)
    OUT/run/                the img-train run folder (best.pt, last.pt, metrics.jsonl, summary.txt, ...)
    OUT/eval.json           img-eval --json of run/best.pt on the test split
    OUT/predictions.jsonl   img-eval --predictions: every test query's answer per branch
    OUT/report.html         img-eval --report
    OUT/tour.log            the commands that ran

As img-pipeline's work folders, OUT is reused: a step whose output is complete is skipped, so running the tour
again only prints its summary, and a tour stopped anywhere continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extract.core.console import format_probability
from extract.core.errors import UsageError
from img_model.data.synthetic import (
    FAMILIES,
    LEARNING_CHECK_CONFIG,
    family_of,
    read_audio_matters,
    write_audio_matters,
)
from pipelines.pipeline import run_stages
from pipelines.pipeline_stages import EvalStage, TrainStage

log = logging.getLogger(f"img_vmr.{__name__}")

CONFIG_FILE = "tour.toml"
BRANCHES = ("fused", "visual", "audio")
HIT_IOU = 0.5  # R1@0.5: the answer counts when its IoU with the moment is at least this
FAMILY_MEANING = {
    "audio": "the moment shows only in the audio",
    "visual": "only in the video frames",
    "both": "in both",
}


@dataclass(frozen=True)
class TourFolder:
    """Where the tour writes (the module's docstring)."""

    out: Path

    @property
    def config(self) -> Path:
        return self.out / CONFIG_FILE

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def run(self) -> Path:
        return self.out / "run"

    @property
    def metrics(self) -> Path:
        return self.out / "eval.json"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions.jsonl"

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def claim_folder(out: Path) -> TourFolder:
    """The tour's folder: a new or empty one, or one an earlier tour wrote (it continues); any other is refused."""
    folder = TourFolder(out.absolute())
    if folder.config.is_file():
        if folder.config.read_text(encoding="utf-8") != LEARNING_CHECK_CONFIG:
            raise UsageError(
                f"--out {out} holds a tour of another version (its {CONFIG_FILE} differs); remove it or give "
                "another --out"
            )
        return folder
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty and holds no tour; give a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        folder.config.write_text(LEARNING_CHECK_CONFIG, encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot write in --out {out} ({error.strerror}); choose a writable folder") from None
    return folder


def _data_complete(data: Path) -> bool:
    """write_audio_matters writes the feature store, the queries, then the text store, which is whole once its
    unfinished parts are gone."""
    text = data / "text.h5"
    return (data / "queries.jsonl").is_file() and text.is_file() and not text.with_name("text.h5.parts").exists()


def run_tour(out: Path, progress: bool) -> TourFolder:
    """Write the data (unless complete), then train and evaluate (each unless done); StageFailed when a command
    cannot go on."""
    folder = claim_folder(out)
    prefix = "[1/3] data"
    if _data_complete(folder.data):
        log.info("%s: skipped, %s is complete", prefix, folder.data)
    else:
        log.info("%s: writing the synthetic audio/visual families into %s", prefix, folder.data)
        shutil.rmtree(folder.data, ignore_errors=True)  # what a stopped tour left: written again, the same
        write_audio_matters(folder.data)
    data = read_audio_matters(folder.data)
    quiet = () if progress else ("--no-progress",)
    eval_args = ("--report", str(folder.report), "--threads", "1", *quiet)
    stages = [
        TrainStage(folder.run, (*data.cli_data_args(), "--config", str(folder.config)), quiet),
        EvalStage(folder.run / "best.pt", str(data.annotations), folder.metrics, folder.predictions, eval_args),
    ]
    run_stages(stages, folder.out / "tour.log", steps_before=1)
    return folder


# --- what the tour shows -------------------------------------------------------------------------------------


def _hit_rate(rows: list[dict[str, Any]], branch: str) -> float | None:
    """R1@0.5 in %, over the rows where the branch answered (the audio branch has no answer without audio)."""
    answered = [row["branches"][branch] for row in rows if row["branches"].get(branch)]
    if not answered:
        return None
    return 100.0 * sum(answer["iou"] >= HIT_IOU for answer in answered) / len(answered)


def _cell(value: float | None) -> str:
    return f"{'n/a' if value is None else f'{value:.1f}':>8}"


def family_table(rows: list[dict[str, Any]]) -> list[str]:
    """R1@0.5 of each branch and the mean audio importance, per family and over all the test queries."""
    header = f"  {'family':<8}{'queries':>8}" + "".join(f"{branch:>8}" for branch in BRANCHES) + "  audio importance"
    lines = [header]
    groups = [(family, [r for r in rows if family_of(r["video_id"]) == family]) for family in FAMILIES]
    for name, members in [*groups, ("all", rows)]:
        if not members:
            continue
        importances = [r["audio_importance"] for r in members if r.get("audio_importance") is not None]
        mean = sum(importances) / len(importances) if importances else None
        cells = "".join(_cell(_hit_rate(members, branch)) for branch in BRANCHES)
        meaning = f"   ({FAMILY_MEANING[name]})" if name in FAMILY_MEANING else ""
        lines.append(f"  {name:<8}{len(members):>8}{cells}  {format_probability(mean):>16}{meaning}")
    return lines


def summary(folder: TourFolder, seconds: float, shown: Path) -> str:
    """What the tour prints: the table, where the report is, and what to try next. `shown` is --out as given."""
    rows = [json.loads(line) for line in folder.predictions.read_text(encoding="utf-8").splitlines() if line]
    report = shown / folder.report.name
    lines = [
        "",
        f"tour: IMG trained on synthetic features and evaluated on {len(rows)} test queries in {seconds:.0f} s",
        "R1@0.5 (%) of the fused answer, the visual-only and the audio-only branch, and the mean predicted audio "
        "importance:",
        *family_table(rows),
        f"report: {report} (open it in a browser: every query on its timeline)",
        "next:",
        *_next_commands(shown),
    ]
    return "\n".join(lines)


def _next_commands(shown: Path) -> list[str]:
    commands = {
        f"img-eval {shown / 'run' / 'best.pt'} --drop-audio": "the same model with the audio taken away (offline)",
        "img-extract videos/ --out feats.h5": "features of your own videos (downloads the models once)",
        "img-pipeline --help": "a real dataset end to end: the paper's recipes (docs: recipes.md)",
    }
    width = max(map(len, commands))
    return [f"  {command:<{width}}   {what}" for command, what in commands.items()]


def run_and_summarise(out: Path, progress: bool) -> str:
    started = time.perf_counter()
    folder = run_tour(out, progress)
    return summary(folder, time.perf_counter() - started, out)
