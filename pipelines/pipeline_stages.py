"""The stages of a pipeline run: what each one runs (the project's own CLIs) and how it knows it is done.

Every stage looks at its output before running:
- done: skipped (`detail` says why it counts as complete);
- partial: run again, and the command resumes where it stopped (every CLI resumes: the feature and text
  stores skip what they hold, img-train continues from last.pt);
- todo: run.
A stage's commands are plain argument lists of img-extract / img-train / img-eval, shown as such by
`img-pipeline --dry-run` and run as subprocesses by pipelines/pipeline.py, exactly as a user would type them.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from extract.core.errors import UsageError

State = Literal["done", "partial", "todo"]

PROGRAMS = {
    "img-extract": "extract.cli",
    "img-train": "img_model.cli.train",
    "img-eval": "img_model.cli.evaluate",
}
EXIT_SOME_FAILED = 1  # img-extract: some videos missing (manifest) or some tracks failed (run): the rest goes on


@dataclass(frozen=True)
class Status:
    state: State
    detail: str


@dataclass(frozen=True)
class Command:
    """One CLI call. `ok_codes` are the exit codes after which the pipeline goes on; `stdout` is a file that
    receives the command's standard output (written whole, once the command succeeded)."""

    program: str
    args: tuple[str, ...]
    ok_codes: frozenset[int] = frozenset({0})
    stdout: Path | None = None

    def argv(self) -> list[str]:
        """This interpreter running the program's module: the project's code, installed or not."""
        return [sys.executable, "-m", PROGRAMS[self.program], *self.args]

    def display(self) -> str:
        redirect = f" > {shlex.quote(str(self.stdout))}" if self.stdout is not None else ""
        return shlex.join([self.program, *self.args]) + redirect


def _flag(name: str, value: object) -> list[str]:
    """['--name', 'value'] when a value is given, [] otherwise (True: the flag alone)."""
    if value is None or value is False:
        return []
    return [name] if value is True else [name, str(value)]


class Stage:
    name: str = ""

    def check(self) -> Status:
        raise NotImplementedError

    def commands(self, status: Status) -> list[Command]:
        raise NotImplementedError

    def missing_inputs(self) -> str | None:
        """Why this stage cannot run with the options given (checked before anything runs), or None."""
        return None


# --- videos and features -----------------------------------------------------------------------------------


@dataclass
class ManifestStage(Stage):
    """`img-extract manifest`: the dataset's videos found under --videos, as the list img-extract reads."""

    dataset: str
    videos: Path | None
    manifest: Path
    data_dir: Path | None = None
    name: str = "manifest"

    def check(self) -> Status:
        if self.manifest.is_file():
            count = sum(1 for line in self.manifest.read_text(encoding="utf-8").splitlines() if line.strip())
            return Status("done", f"{self.manifest} lists {count} videos")
        return Status("todo", f"no {self.manifest} yet")

    def missing_inputs(self) -> str | None:
        if self.videos is None:
            return "give --videos DIR (the dataset's videos), or start from released features (--released-visual)"
        if not self.videos.is_dir():
            return f"--videos {self.videos} is not a folder"
        return None

    def commands(self, status: Status) -> list[Command]:
        # A named dataset's train and test videos (ActivityNet's val_2 is never used); your file's every video.
        splits = [] if self.dataset.endswith(".jsonl") else ["--split", "train", "--split", "test"]
        args = [
            "manifest",
            self.dataset,
            "--videos",
            str(self.videos),
            "--out",
            str(self.manifest),
            *splits,
            *_flag("--data-dir", self.data_dir),
        ]
        return [Command("img-extract", tuple(args), frozenset({0, EXIT_SOME_FAILED}))]


def manifest_ids(manifest: Path) -> list[str]:
    return [json.loads(line)["video_id"] for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class ExtractStage(Stage):
    """`img-extract MANIFEST --out feats.h5 --features V,A`: done when every listed video has both tracks, or a
    failure record for the missing ones (failures are kept, as img-extract keeps them; `img-extract
    --retry-failed` retries them), or no audio stream at all."""

    manifest: Path
    store: Path
    visual: str
    audio: str
    extract_options: tuple[str, ...] = ()
    name: str = "extract"

    def check(self) -> Status:
        from extract.store import FeatureStore

        if not self.manifest.is_file():
            return Status("todo", "no video list yet")
        wanted = manifest_ids(self.manifest)
        if not FeatureStore.exists(self.store):
            return Status("todo", f"{len(wanted)} videos to extract")
        with FeatureStore(self.store) as store:
            unsettled = failed = 0
            for video_id in wanted:
                if video_id not in store:
                    unsettled += 1
                    continue
                needed = {self.visual}
                if store.metadata(video_id).get("has_audio", True):
                    needed.add(self.audio)
                missing = needed - set(store.feature_names(video_id))
                failing = missing & store.failed_features(video_id)
                failed += bool(failing)
                unsettled += bool(missing - failing)
        if unsettled:
            return Status("partial", f"{unsettled} of {len(wanted)} videos still to extract (resumes)")
        note = f", {failed} with failed tracks (img-extract inspect {self.store} lists them)" if failed else ""
        return Status("done", f"{self.store} holds {self.visual} and {self.audio} for {len(wanted)} videos{note}")

    def commands(self, status: Status) -> list[Command]:
        args = [
            str(self.manifest),
            "--out",
            str(self.store),
            "--features",
            f"{self.visual},{self.audio}",
            *self.extract_options,
        ]
        return [Command("img-extract", tuple(args), frozenset({0, EXIT_SOME_FAILED}))]


@dataclass
class ImportStage(Stage):
    """`img-extract import-img SOURCE --out feats.h5 --feature NAME`: released features instead of videos."""

    source: Path
    store: Path
    feature: str
    row_seconds: float | None = None
    name: str = "import"

    def check(self) -> Status:
        from extract.store import FeatureStore

        if FeatureStore.exists(self.store):
            with FeatureStore(self.store) as store:
                if self.feature in store.feature_names():
                    count = sum(self.feature in store.feature_names(v) for v in store.video_ids())
                    return Status("done", f"{self.store} holds {self.feature!r} for {count} videos")
        return Status("todo", f"import {self.source} as {self.feature!r}")

    def missing_inputs(self) -> str | None:
        return None if self.source.exists() else f"{self.source} does not exist"

    def commands(self, status: Status) -> list[Command]:
        args = [
            "import-img",
            str(self.source),
            "--out",
            str(self.store),
            "--feature",
            self.feature,
            *_flag("--row-seconds", self.row_seconds),
        ]
        return [Command("img-extract", tuple(args))]


# --- text ----------------------------------------------------------------------------------------------------


@dataclass
class TextStage(Stage):
    """`img-extract text`: the queries' GloVe ids (or BERT / CLIP-text features) in a text store. Done when
    the store is complete: its file exists and no run left parts beside it."""

    dataset: str
    embed: str  # glove, bert[:MODEL], clip-text[:MODEL]
    out: Path
    store: Path  # the feature store: durations of a custom dataset's videos
    glove: Path | None = None
    glove_cache: Path | None = None
    data_dir: Path | None = None
    device: str | None = None
    name: str = "text"

    def check(self) -> Status:
        parts = self.out.with_name(self.out.name + ".parts")
        if parts.is_dir():
            return Status("partial", f"{parts} holds an unfinished run (resumes)")
        if self.out.is_file():
            return Status("done", f"{self.out} is complete")
        return Status("todo", f"no {self.out} yet")

    def missing_inputs(self) -> str | None:
        if self.embed == "glove":
            if self.glove is None:
                return (
                    "give --glove PATH/glove.840B.300d.txt (download glove.840B.300d.zip from "
                    "https://nlp.stanford.edu/projects/glove/ and unzip it; it is not on PyPI)"
                )
            if not self.glove.is_file():
                return f"--glove {self.glove} does not exist"
        return None

    def commands(self, status: Status) -> list[Command]:
        embed = f"glove:{self.glove}" if self.embed == "glove" else self.embed
        if self.dataset.endswith(".jsonl"):
            queries = ["--annotations", self.dataset, *_flag("--store", self.store)]
        else:
            queries = ["--dataset", self.dataset, *_flag("--data-dir", self.data_dir)]
        args = ["text", *queries, "--embed", embed, "--out", str(self.out), *_flag("--glove-cache", self.glove_cache)]
        if self.embed != "glove":
            args += _flag("--device", self.device)
        return [Command("img-extract", tuple(args))]


# --- training and evaluation ---------------------------------------------------------------------------------


def run_finished(run: Path) -> bool:
    """img-train wrote its final report (metrics.jsonl holds the "final" line; a line torn by a kill is left out)
    and best.pt."""
    from img_model.train.run_log import has_final_line

    return (run / "best.pt").is_file() and has_final_line(run)


@dataclass
class TrainStage(Stage):
    """`img-train`: done when the run folder holds its final report; partial (`--resume RUN`) when it holds a
    last.pt. `check_config` (pipelines/pipeline.py) refuses a run trained with another configuration."""

    run: Path
    train_args: tuple[str, ...]  # data options, --config, recipe flags: a new run
    runtime_args: tuple[str, ...]  # --device, --precision, --threads: also on --resume
    name: str = "train"

    def check(self) -> Status:
        if run_finished(self.run):
            return Status("done", f"{self.run} is trained ({self.run / 'summary.txt'})")
        if (self.run / "last.pt").is_file():
            return Status("partial", f"{self.run / 'last.pt'} is there (resumes exactly)")
        return Status("todo", f"no run in {self.run} yet")

    def commands(self, status: Status) -> list[Command]:
        if status.state == "partial":
            return [Command("img-train", ("--resume", str(self.run), *self.runtime_args))]
        return [Command("img-train", (*self.train_args, "--out", str(self.run), *self.runtime_args))]


@dataclass
class EvalStage(Stage):
    """`img-eval RUN/best.pt --dataset D --json`: the report and per-query predictions. Done when the report
    is newer than best.pt (a model trained again is evaluated again)."""

    checkpoint: Path
    dataset: str
    report: Path
    predictions: Path
    eval_args: tuple[str, ...] = ()
    name: str = "eval"

    def check(self) -> Status:
        if self.report.is_file() and self.checkpoint.is_file():
            if self.report.stat().st_mtime_ns >= self.checkpoint.stat().st_mtime_ns:
                return Status("done", f"{self.report} holds the metrics of {self.checkpoint}")
            return Status("todo", f"{self.checkpoint} is newer than {self.report}")
        return Status("todo", f"no {self.report} yet")

    def commands(self, status: Status) -> list[Command]:
        args = [
            str(self.checkpoint),
            "--dataset",
            self.dataset,
            "--json",
            "--predictions",
            str(self.predictions),
            *self.eval_args,
        ]
        return [Command("img-eval", tuple(args), stdout=self.report)]


def check_inputs(stages: list[Stage]) -> None:
    """Refuse, before anything runs, options that a stage still to run would need (one line)."""
    for stage in stages:
        if stage.check().state != "done":
            problem = stage.missing_inputs()
            if problem:
                raise UsageError(f"{stage.name}: {problem}")
