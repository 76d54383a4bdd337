"""Running an experiment's runs: one img-train run folder and one img-eval report per setting and seed, each run
skipped when it is finished, resumed (img-train --resume) when it is half done, one at a time or one per device.

    DIR/runs/c00-SETTING/seed-0/    the img-train run folder (config.toml, best.pt, last.pt, metrics.jsonl, ...)
        recipe.toml                 the img-train --config this run was started with (a changed recipe is refused)
        eval.json                   img-eval --json of best.pt (of refit/best.pt for a refit run) on test, on the
                                    recipe's [runtime] threads as its training
        commands.log                what ran, when, and the commands' own output

A run is done when its eval.json is newer than the checkpoint it evaluated and the training finished; a killed
run continues from its last.pt. Commands run as subprocesses that end with the runner (even a SIGKILLed one).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from extract.core.child_process import end_with_parent
from extract.core.console import EXIT_INTERRUPTED, EXIT_TERMINATED, is_sigterm, sigterm_raises
from extract.core.errors import ImgVmrError, UsageError
from extract.core.files import write_atomically
from img_model.train.config import sections_toml
from img_model.train.run_log import REFIT_FOLDER
from pipelines.experiment import Cell, Experiment
from pipelines.pipeline_stages import Command, run_finished

log = logging.getLogger(f"img_vmr.{__name__}")

RECIPE_FILE, REPORT_FILE, COMMANDS_LOG = "recipe.toml", "eval.json", "commands.log"
POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 60  # a terminated command commits its checkpoint; after this it is killed


class ExperimentInterrupted(ImgVmrError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Run:
    """One setting x seed of an experiment."""

    cell: Cell
    seed: int
    folder: Path  # the img-train run folder
    recipe: str  # the img-train --config text
    refit: bool
    threads: int = 0  # the recipe's [runtime] threads (0: torch's choice), for its img-eval as for its img-train

    @property
    def name(self) -> str:
        return f"{self.cell.folder}/seed-{self.seed}"

    @property
    def model_folder(self) -> Path:
        """The run whose best.pt is evaluated: the refit one for a refit run."""
        return self.folder / REFIT_FOLDER if self.refit else self.folder

    @property
    def report(self) -> Path:
        return self.folder / REPORT_FILE

    def state(self) -> str:
        """done | evaluate | resume | train."""
        if run_finished(self.model_folder):
            best = self.model_folder / "best.pt"
            if self.report.is_file() and self.report.stat().st_mtime_ns >= best.stat().st_mtime_ns:
                return "done"
            return "evaluate"
        return "resume" if (self.folder / "last.pt").is_file() else "train"

    def command(self, device: str | None) -> Command | None:
        """The next command this run needs (None: done)."""
        state = self.state()
        runtime = ["--no-progress", *(["--device", device] if device else [])]
        if state == "train":
            args = ("--config", str(self.folder / RECIPE_FILE), "--out", str(self.folder), *runtime)
            return Command("img-train", args)
        if state == "resume":  # also starts or continues RUN/refit/ once the selecting run finished
            return Command("img-train", ("--resume", str(self.folder), *runtime))
        if state == "evaluate":
            threads = ("--threads", str(self.threads)) if self.threads else ()
            args = (str(self.model_folder / "best.pt"), "--json", *runtime, *threads)
            return Command("img-eval", args, stdout=self.report)
        return None


def plan_runs(experiment: Experiment, out: Path) -> list[Run]:
    """Every setting x seed, with its run folder under `out`; a folder that holds a run of another recipe is
    refused (UsageError), so an edited experiment never mixes old runs into its table."""
    runs = []
    for cell in experiment.cells:
        for seed in experiment.seeds:
            sections = experiment.sections(cell, seed)
            header = f"img-pipeline experiment {experiment.path.name}: {cell.label}, seed {seed}"
            run = Run(
                cell,
                seed,
                out / cell.folder / f"seed-{seed}",
                sections_toml(sections, header),
                bool(sections.get("train", {}).get("refit", False)),
                int(sections.get("runtime", {}).get("threads", 0)),
            )
            written = run.folder / RECIPE_FILE
            if written.is_file() and _settings(written.read_text(encoding="utf-8")) != _settings(run.recipe):
                raise UsageError(
                    f"{run.folder} holds a run of another recipe (its {RECIPE_FILE} differs from this experiment's); "
                    "use another --out, or remove that folder to train it again"
                )
            runs.append(run)
    return runs


def _settings(recipe: str) -> list[str]:
    """A recipe's lines without its comments (the header names the experiment file, which may be renamed)."""
    return [line for line in recipe.splitlines() if line.strip() and not line.startswith("#")]


@dataclass
class Tally:
    done: int = 0  # finished by this invocation
    skipped: int = 0  # finished before it
    failed: list[str] | None = None

    def __post_init__(self) -> None:
        self.failed = [] if self.failed is None else self.failed


@dataclass
class _Active:
    run: Run
    command: Command
    process: subprocess.Popen[bytes]
    output: Path | None  # the temporary file of a command's stdout (img-eval --json)


def run_all(runs: list[Run], devices: list[str | None]) -> Tally:
    """Run every unfinished run, one per device at a time (`[None]`: one at a time, img-train's own device).
    A run whose command fails is reported and the others go on. SIGTERM / Ctrl-C stop the running commands (they
    keep their last checkpoint) and raise ExperimentInterrupted."""
    tally = Tally()
    pending: deque[Run] = deque()
    for run in runs:
        if run.state() == "done":
            tally.skipped += 1
        else:
            pending.append(run)
    log.info("%d runs: %d finished before (skipped), %d to run", len(runs), tally.skipped, len(pending))
    idle = list(devices)
    active: dict[str | None, _Active] = {}
    with sigterm_raises():
        try:
            while pending or active:
                while pending and idle:
                    device = idle.pop(0)
                    run = pending.popleft()
                    _write_recipe(run)
                    active[device] = _start(run, run.command(device))  # type: ignore[arg-type]
                time.sleep(POLL_SECONDS)
                for device, current in list(active.items()):
                    status = current.process.poll()
                    if status is None:
                        continue
                    del active[device]
                    run = current.run
                    if not _finish(current, status, tally):
                        idle.append(device)
                        continue
                    following = run.command(device)
                    if following is None:
                        tally.done += 1
                        log.info("%s: finished", run.name)
                        idle.append(device)
                    else:
                        active[device] = _start(run, following)
        except KeyboardInterrupt as interrupt:
            _stop(list(active.values()))
            code = EXIT_TERMINATED if is_sigterm(interrupt) else EXIT_INTERRUPTED
            raise ExperimentInterrupted(
                f"{'terminated' if code == EXIT_TERMINATED else 'interrupted'}; re-run the same command to continue "
                "(finished runs are skipped, stopped ones resume)",
                code,
            ) from None
    return tally


def _write_recipe(run: Run) -> None:
    run.folder.mkdir(parents=True, exist_ok=True)
    if not (run.folder / RECIPE_FILE).is_file():
        write_atomically(run.folder / RECIPE_FILE, run.recipe)


def _start(run: Run, command: Command) -> _Active:
    log.info("%s: %s", run.name, command.display())
    journal = run.folder / COMMANDS_LOG
    with journal.open("a", encoding="utf-8") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {command.display()}\n")
    output = run.folder / f".{command.program}.stdout.tmp" if command.stdout is not None else None
    parent = os.getpid()
    with journal.open("ab") as errors, output.open("wb") if output else journal.open("ab") as stdout:
        process = subprocess.Popen(
            command.argv(),
            stdout=stdout,
            stderr=errors,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=lambda: end_with_parent(parent, signal.SIGTERM) or None,
        )
    return _Active(run, command, process, output)


def _finish(current: _Active, status: int, tally: Tally) -> bool:
    """Whether the command succeeded; its stdout file is moved into place, a failure is counted with the last
    line the command wrote."""
    run, command = current.run, current.command
    if status == 0:
        if current.output is not None and command.stdout is not None:
            current.output.replace(command.stdout)
        return True
    if current.output is not None:
        current.output.unlink(missing_ok=True)
    lines = (run.folder / COMMANDS_LOG).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    message = f"{run.name}: {command.program} exit status {status}: {last} (all of it in {run.folder / COMMANDS_LOG})"
    log.error("%s", message)
    assert tally.failed is not None
    tally.failed.append(message)
    return False


def _stop(active: list[_Active]) -> None:
    """SIGTERM to every running command (img-train keeps its last checkpoint), then wait for them."""
    for current in active:
        if current.process.poll() is None:
            current.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for current in active:
        try:
            current.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            current.process.kill()
            current.process.wait()
        if current.output is not None:
            current.output.unlink(missing_ok=True)
