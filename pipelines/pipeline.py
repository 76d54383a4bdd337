"""One recipe, run end to end in a work folder: manifest -> img-extract -> img-extract text -> img-train -> img-eval.

    WORK/pipeline.json             the feature presets (and whether from videos or released): one pair per folder
    WORK/feats.h5 (+ .parts/)      the feature store, shared by every recipe run in WORK (charades-sta and
                                   charades-am extract the Charades videos once)
    WORK/pipeline.log              what ran, when, with which command
    WORK/D/                        per training dataset D (a dataset name, or your .jsonl file's name):
        pipeline.json              its text embedding
        videos.jsonl               its videos found under --videos (videos.missing.txt: the others)
        text.h5                    its text store (the vocabulary of its train + test queries)
        train.toml                 the recipe's training sections with your --config over them (when any)
        run/                       the img-train run folder (config.toml, best.pt, last.pt, metrics, summary)
        eval/NAME.json             img-eval --json of best.pt on dataset NAME; NAME.predictions.jsonl per query

Each stage checks its output first (pipelines/pipeline_stages.py) and is skipped when complete, so the same command run
again does nothing, and a run stopped anywhere continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extract.core.errors import ImgVmrError, UsageError
from extract.core.files import write_atomically
from pipelines.pipeline_stages import (
    Command,
    EvalStage,
    ExtractStage,
    ImportStage,
    ManifestStage,
    Stage,
    TextStage,
    TrainStage,
    check_inputs,
    run_finished,
)
from pipelines.recipes import METRICS, Recipe

log = logging.getLogger(f"img_vmr.{__name__}")

IDENTITY_FILE = "pipeline.json"
TRAINING_CONFIG = "train.toml"
VGGISH_EXAMPLE_SECONDS = 0.96  # rows of released VGGish features


class StageFailed(ImgVmrError):
    """A stage's command exited with a code the pipeline cannot go on after."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PipelineOptions:
    """Everything `img-pipeline` takes besides the recipe (the CLI maps its flags onto this)."""

    work: Path
    videos: Path | None = None
    released_visual: Path | None = None
    released_audio: Path | None = None
    glove: Path | None = None
    glove_cache: Path | None = None
    data_dir: Path | None = None
    config: Path | None = None  # img-train --config, over the recipe's training sections
    train_flags: Mapping[str, Any] = field(default_factory=dict)  # epochs, batch_size, seed, select_on
    device: str | None = None
    precision: str | None = None
    threads: int | None = None
    weights_dir: Path | None = None
    trust_weights: bool = False
    clip_model: str | None = None
    progress: bool = True

    @property
    def released(self) -> bool:
        return self.released_visual is not None or self.released_audio is not None


@dataclass
class PipelinePlan:
    recipe: Recipe
    options: PipelineOptions
    stages: list[Stage]
    visual: str  # feature names in the store (a preset's, or released-<preset> for imported features)
    audio: str
    reports: dict[str, Path]  # evaluated dataset -> img-eval JSON
    training_toml: str | None = None  # WORK/train.toml's content (written when the pipeline runs)


TRAIN_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "seed": "--seed", "select_on": "--select-on"}


def _flags(pairs: list[tuple[str, Any]]) -> list[str]:
    out: list[str] = []
    for name, value in pairs:
        if value is True:
            out.append(name)
        elif value not in (None, False):
            out += [name, str(value)]
    return out


def _eval_name(dataset: str) -> str:
    return Path(dataset).stem if dataset.endswith(".jsonl") else dataset


def _custom_needs_store(annotations: str) -> bool:
    """A custom file whose lines lack a duration takes it from the feature store (img-extract text --store)."""
    from manifests.custom import read_rows

    return any(row.duration is None for row in read_rows(Path(annotations)))


def build_plan(recipe: Recipe, options: PipelineOptions) -> PipelinePlan:
    """The stages of the recipe in the work folder, their commands, and the checks that need no stage to run."""
    work = options.work.absolute()
    folder = work / dataset_folder(recipe)
    store, text, run = work / "feats.h5", folder / "text.h5", folder / "run"
    stages: list[Stage] = []
    if options.released:
        if options.released_visual is None or options.released_audio is None:
            raise UsageError("give both --released-visual and --released-audio (or neither, and --videos)")
        visual, audio = f"released-{recipe.visual}", f"released-{recipe.audio}"
        audio_seconds = VGGISH_EXAMPLE_SECONDS if recipe.audio.startswith("vggish") else None
        stages += [
            ImportStage(options.released_visual.absolute(), store, visual, name="import visual"),
            ImportStage(options.released_audio.absolute(), store, audio, audio_seconds, name="import audio"),
        ]
    else:
        visual, audio = recipe.visual, recipe.audio
        manifest = folder / "videos.jsonl"
        extract_options = _flags(
            [
                ("--device", options.device),
                ("--precision", options.precision),
                ("--weights-dir", options.weights_dir),
                ("--trust-weights", options.trust_weights),
                ("--clip-model", options.clip_model),
                ("--no-progress", not options.progress),
            ]
        )
        stages += [
            ManifestStage(recipe.dataset, options.videos, manifest, options.data_dir),
            ExtractStage(manifest, store, visual, audio, tuple(extract_options)),
        ]
    custom_store = recipe.is_custom and _custom_needs_store(recipe.dataset)
    stages.append(
        TextStage(
            recipe.dataset,
            recipe.text,
            text,
            store if custom_store else None,
            options.glove,
            options.glove_cache,
            options.data_dir,
            options.device,
        )
    )
    training_toml = training_config(recipe, options)
    config = folder / TRAINING_CONFIG if training_toml is not None else None
    data_args = [
        "--dataset",
        recipe.dataset,
        "--features",
        str(store),
        "--visual",
        visual,
        "--audio",
        audio,
        "--text",
        str(text),
        *_flags([("--data-dir", options.data_dir), ("--config", config)]),
    ]
    recipe_args = _flags([(flag, options.train_flags.get(name)) for name, flag in TRAIN_FLAGS.items()])
    runtime_args = _flags(
        [
            ("--device", options.device),
            ("--precision", options.precision),
            ("--threads", options.threads),
            ("--no-progress", not options.progress),
        ]
    )
    stages.append(TrainStage(run, (*data_args, *recipe_args), tuple(runtime_args)))
    eval_args = _flags(
        [
            ("--data-dir", options.data_dir),
            ("--device", options.device),
            ("--precision", options.precision),
            ("--threads", options.threads),
            ("--no-progress", not options.progress),
        ]
    )
    reports = {}
    for dataset in recipe.evaluate_on:
        name = _eval_name(dataset)
        reports[dataset] = folder / "eval" / f"{name}.json"
        stages.append(
            EvalStage(
                run / "best.pt",
                dataset,
                reports[dataset],
                folder / "eval" / f"{name}.predictions.jsonl",
                tuple(eval_args),
                name=f"eval {name}",
            )
        )
    plan = PipelinePlan(recipe, options, stages, visual, audio, reports, training_toml)
    check_work_folder(plan)
    check_training_config(plan, store, text)
    return plan


# --- the training configuration ------------------------------------------------------------------------------


def training_config(recipe: Recipe, options: PipelineOptions) -> str | None:
    """The recipe's training sections with the user's --config file over them, as the TOML of WORK/train.toml
    (None when neither says anything: img-train's per-dataset defaults are the paper's)."""
    from img_model.train.config import read_toml, sections_toml

    user = read_toml(options.config) if options.config is not None else {}
    sections: dict[str, dict[str, Any]] = {name: dict(values) for name, values in recipe.training.items()}
    for name, values in user.items():
        sections.setdefault(name, {}).update(values)
    if not any(sections.values()):
        return None
    origin = f"recipe {recipe.name}" + (f", then {options.config}" if options.config else "")
    return sections_toml(sections, header=f"img-pipeline: the training configuration ({origin})")


def _comparable(run: Any) -> dict[str, Any]:
    """A TrainingRunConfig's recipe without what the data sets (feature and vocabulary sizes) and without runtime."""
    from img_model.train.config import DATA_DERIVED

    sections = run.recipe()
    sections["model"] = {k: v for k, v in sections["model"].items() if k not in DATA_DERIVED}
    return {f"{section}.{name}": value for section, values in sections.items() for name, value in values.items()}


def check_training_config(plan: PipelinePlan, store: Path, text: Path) -> None:
    """Resolve the training configuration now (a bad --config is refused before hours of extraction) and refuse
    a run folder trained, or being trained, with another one."""
    from extract.core.provenance import compare_recipes
    from img_model.data.config import data_overrides
    from img_model.train.config import resolve

    options, recipe = plan.options, plan.recipe
    data = data_overrides(
        dataset=recipe.dataset,
        features=(store,),
        visual=plan.visual,
        audio=plan.audio,
        text=text,
        data_dir=options.data_dir,
    )
    overrides = {"train": dict(options.train_flags), "data": data}
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / TRAINING_CONFIG
        if plan.training_toml is not None:
            config.write_text(plan.training_toml, encoding="utf-8")
        requested = resolve(config if plan.training_toml is not None else None, overrides)
    run = options.work.absolute() / dataset_folder(recipe) / "run"
    if not (run / "config.toml").is_file():
        return
    recorded = resolve(run / "config.toml")
    detail = compare_recipes(_comparable(recorded), _comparable(requested)).refused
    if detail:
        state = "was trained" if run_finished(run) else "is being trained"
        raise UsageError(
            f"{run} {state} with another configuration ({detail}); remove it to train again, or use another --work"
        )


# --- the work folder -----------------------------------------------------------------------------------------


def dataset_folder(recipe: Recipe) -> str:
    """WORK's subfolder of a recipe's training dataset: its name, or the stem of your .jsonl file."""
    return _eval_name(recipe.dataset)


def _identities(plan: PipelinePlan) -> dict[Path, dict[str, str]]:
    """What each folder's pipeline.json must say: the feature presets for WORK, the text embedding for WORK/D."""
    work, recipe = plan.options.work, plan.recipe
    features = {
        "visual": recipe.visual,
        "audio": recipe.audio,
        "features": "released" if plan.options.released else "videos",
    }
    return {work: features, work / dataset_folder(recipe): {"dataset": recipe.dataset, "text": recipe.text}}


def check_work_folder(plan: PipelinePlan) -> None:
    """Refuse a work folder made with other feature presets, or a dataset folder with another text embedding."""
    for folder, identity in _identities(plan).items():
        path = folder / IDENTITY_FILE
        if not path.is_file():
            continue
        recorded = json.loads(path.read_text(encoding="utf-8"))
        changed = [
            f"{key}: {recorded.get(key)!r} -> {value!r}"
            for key, value in identity.items()
            if recorded.get(key) != value
        ]
        if changed:
            raise UsageError(f"{folder} holds a pipeline of other inputs ({', '.join(changed)}); use another --work")


def claim_work_folder(plan: PipelinePlan) -> None:
    """Record the identities (pipeline.json) and write the training configuration (D/train.toml)."""
    try:
        for folder, identity in _identities(plan).items():
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / IDENTITY_FILE).is_file():
                write_atomically(folder / IDENTITY_FILE, json.dumps(identity, indent=1) + "\n")
        config = plan.options.work / dataset_folder(plan.recipe) / TRAINING_CONFIG
        if plan.training_toml is not None and (not config.is_file() or config.read_text() != plan.training_toml):
            write_atomically(config, plan.training_toml)
    except OSError as error:
        raise UsageError(
            f"cannot write in --work {plan.options.work} ({error.strerror}); choose a writable folder"
        ) from None


# --- running -------------------------------------------------------------------------------------------------


def describe(plan: PipelinePlan) -> list[str]:
    """What --dry-run prints: every stage, whether it would run, and its commands."""
    lines = [f"recipe {plan.recipe.name}: {plan.recipe.description}", f"work folder {plan.options.work}"]
    for number, stage in enumerate(plan.stages, start=1):
        status = stage.check()
        action = {"done": "skip", "partial": "resume", "todo": "run"}[status.state]
        lines.append(f"[{number}/{len(plan.stages)}] {stage.name}: {action} ({status.detail})")
        if status.state != "done":
            lines += [f"    {command.display()}" for command in stage.commands(status)]
    return lines


def run_plan(plan: PipelinePlan) -> None:
    """Run every stage that is not done, in order; StageFailed when one cannot go on."""
    check_inputs(plan.stages)
    claim_work_folder(plan)
    run_stages(plan.stages, plan.options.work / "pipeline.log")


def run_stages(stages: Sequence[Stage], journal: Path, steps_before: int = 0) -> None:
    """Run every stage that is not done, in order, each command logged in `journal`; the progress lines count
    `steps_before` steps done before these (the tour writes its data itself first)."""
    total = steps_before + len(stages)
    for number, stage in enumerate(stages, start=steps_before + 1):
        status = stage.check()
        prefix = f"[{number}/{total}] {stage.name}"
        if status.state == "done":
            log.info("%s: skipped, %s", prefix, status.detail)
            continue
        log.info("%s: %s (%s)", prefix, "resuming" if status.state == "partial" else "running", status.detail)
        started = time.perf_counter()
        for command in stage.commands(status):
            _run_command(command, stage.name, journal)
        log.info("%s: finished in %.0f s", prefix, time.perf_counter() - started)


EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


def _exit_status(returncode: int) -> int:
    """A child's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _run_command(command: Command, stage: str, journal: Path) -> None:
    """Run one command, its output on our terminal (stdout into `command.stdout` when set). SIGTERM (a job
    scheduler preempting us) is passed on to the command, which commits its work and exits; Ctrl-C reaches it
    directly (same process group). Either way we wait for it, then stop with 143 / 130."""
    log.info("  %s", command.display())
    with journal.open("a", encoding="utf-8") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {stage}: {command.display()}\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    capture = subprocess.PIPE if command.stdout is not None else None
    process: subprocess.Popen[str] | None = None
    terminated = False

    def forward(signum: int, frame: object) -> None:
        nonlocal terminated
        terminated = True
        if process is not None:
            process.terminate()

    # installed before the command starts: a SIGTERM in between would end us and leave the command running
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        process = subprocess.Popen(command.argv(), stdout=capture, text=True, env=env)
        if terminated:  # it came while the command was starting
            process.terminate()
        try:
            output, _ = process.communicate()
        except KeyboardInterrupt:
            process.wait()
            raise StageFailed(f"{stage}: interrupted; re-run the same command to continue", EXIT_INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    status = _exit_status(process.returncode)
    if terminated:
        raise StageFailed(f"{stage}: terminated (SIGTERM); re-run the same command to continue", EXIT_TERMINATED)
    if status not in command.ok_codes:
        raise StageFailed(
            f"{stage} failed ({command.program} exit status {status}; its message is above); fix the cause and "
            "re-run the same command: finished stages are skipped and this one resumes",
            status if status in (EXIT_INTERRUPTED, EXIT_TERMINATED) else 1,
        )
    if status:
        log.warning("  %s exited with %d (some videos missing or failed; see above); going on", command.program, status)
    if command.stdout is not None:
        command.stdout.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(command.stdout, output)


# --- the result ----------------------------------------------------------------------------------------------


def summary(plan: PipelinePlan) -> str:
    """Fused-branch metrics of every evaluation beside the paper's numbers for the same setting."""
    lines = []
    for dataset, path in plan.reports.items():
        if not path.is_file():
            continue
        report = json.loads(path.read_text(encoding="utf-8"))
        fused = report["branches"]["fused"]
        header = f"{_eval_name(dataset)} test, {report['queries']} queries (fused branch; {path})"
        lines += [header, f"  {'':<26}" + "".join(f"{m:>8}" for m in METRICS)]
        lines.append(f"  {'this run':<26}" + "".join(f"{fused[m]:8.2f}" for m in METRICS))
        paper = plan.recipe.paper.get(dataset)
        if paper is not None:
            lines.append(f"  {'paper (' + paper.source + ')':<26}" + "".join(f"{v:8.2f}" for v in paper.values))
            if report.get("select_on") == "val":
                lines.append(
                    "  (selected on held-out training videos; the paper selected on the test split: --select-on test)"
                )
    return "\n".join(lines)
