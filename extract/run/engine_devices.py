"""The local engine on several devices (`--devices 0,1,2,3` or `all`): one worker process per device, each
running the local engine on its share of the plan and committing its own part files.

    parent: the store's writer lock, the plan, one progress bar, the index (built once, at the end)
      worker cuda:0  models on cuda:0, LocalEngine over its videos -> part-<utc>-<host>-<pid0>-<seq>.h5
      worker cuda:1  models on cuda:1, LocalEngine over its videos -> part-<utc>-<host>-<pid1>-<seq>.h5

No HDF5 file is ever opened for writing by two processes: a part is built in memory and saved under a temporary
name that carries its writer's pid, then renamed (store.PartWriter: no lock, no index); only the parent, which
holds the lock, writes the index. Workers are started with `spawn` (CUDA cannot be forked), load their models
once in `prepare` (which reports their provenance, so a store made differently is refused before any work) and
then take one list of videos per run: largest files first, each onto the least loaded worker.

Ctrl-C or SIGTERM reach every worker (the parent forwards them); each commits its finished videos and the parent
writes the index before the run stops. A worker that dies (killed, out of memory) loses only what it had not
committed: the run stops with WorkerLostError and the same command resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extract.errors import ImgVmrError, ProvenanceMismatchError, UsageError, WorkerLostError
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.presets import Preset
from extract.run.collector import progress_bar
from extract.run.config import RunConfig
from extract.run.plan import WorkItem
from extract.run.summary import RunSummary
from extract.store import PartWriter, StoreWriter

log = logging.getLogger("img_vmr.extract")

Build = Callable[[Preset, ExtractorOptions], FeatureExtractor]
READY_TIMEOUT_S = 1800.0  # model loading (a first download of weights included)
STOP_GRACE_S = 120.0  # after an interrupt: time for the workers to commit their finished videos


def parse_devices(text: str) -> tuple[str, ...]:
    """`--devices`: 'all' (every visible CUDA GPU), GPU indices '0,1,3', or device names ('cuda:2', 'cpu';
    'cpu,cpu' runs two CPU workers)."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if entries == ["all"]:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError("--devices all: no CUDA GPU is visible here; use --device cpu (or --devices cpu,cpu)")
        return tuple(f"cuda:{index}" for index in range(count))
    devices = []
    for entry in entries:
        if entry.isdigit():
            devices.append(f"cuda:{entry}")
        elif entry == "cpu" or (entry.startswith("cuda:") and entry[5:].isdigit()):
            devices.append(entry)
        else:
            raise UsageError(f"--devices {text!r}: {entry!r} is not a GPU index, cuda:N or cpu (e.g. --devices 0,1)")
    if not devices:
        raise UsageError("--devices is empty; e.g. --devices 0,1 or --devices all")
    return tuple(devices)


def split_items(items: Sequence[WorkItem], workers: int) -> list[list[WorkItem]]:
    """Largest files first, each onto the worker with the fewest bytes so far (plan order kept per worker)."""

    def size(item: WorkItem) -> int:
        try:
            return item.path.stat().st_size
        except OSError:
            return 0

    loads, shares = [0] * workers, [[] for _ in range(workers)]  # type: list[int], list[list[int]]
    order = sorted(range(len(items)), key=lambda index: -size(items[index]))
    for index in order:
        worker = loads.index(min(loads))
        shares[worker].append(index)
        loads[worker] += max(size(items[index]), 1)
    return [[items[index] for index in sorted(share)] for share in shares]


@dataclass
class _WorkerSpec:
    number: int
    device: str
    presets: list[Preset]
    options: ExtractorOptions
    config: RunConfig
    build: Build
    torch_threads: int
    console_level: int


@dataclass
class _Outcome:
    """What a worker reports after a run: its summary, and the error that stopped it (None when it finished)."""

    summary: RunSummary
    error: BaseException | None


class DeviceWorkers:
    """One worker process per device; see the module doc."""

    def __init__(self, presets: Sequence[Preset], options: ExtractorOptions, config: RunConfig, build: Build) -> None:
        self.presets, self.options, self.config, self.build = list(presets), options, config, build
        self.context = mp.get_context("spawn")
        self.messages: Any = None
        self.inboxes: list[Any] = []
        self.processes: list[Any] = []
        self.provenance: dict[str, dict[str, Any]] | None = None

    # --- models --------------------------------------------------------------------------------------------

    def prepare(self) -> dict[str, dict[str, Any]]:
        if self.provenance is not None:
            return self.provenance
        self.messages = self.context.Queue()
        threads = max(1, (os.cpu_count() or 1) // len(self.config.devices))
        level = _console_level()
        for number, device in enumerate(self.config.devices):
            spec = _WorkerSpec(number, device, self.presets, self.options, self.config, self.build, threads, level)
            inbox = self.context.Queue()
            process = self.context.Process(
                target=_worker_main, args=(spec, inbox, self.messages), name=f"extract-{device}", daemon=True
            )
            process.start()
            self.inboxes.append(inbox)
            self.processes.append(process)
        try:
            records = self._await_ready()
        except BaseException:
            self.close()
            raise
        first = records[0]
        for number, other in enumerate(records[1:], start=1):
            for name, record in first.items():
                if other.get(name, {}).get("recipe") != record["recipe"]:
                    self.close()
                    raise ProvenanceMismatchError(
                        f"the workers on {self.config.devices[0]} and {self.config.devices[number]} would make "
                        f"{name!r} features differently; give devices of one kind to --devices"
                    )
        self.provenance = first
        return first

    def _await_ready(self) -> list[dict[str, dict[str, Any]]]:
        records: dict[int, dict[str, dict[str, Any]]] = {}
        while len(records) < len(self.processes):
            kind, number, payload = self._next_message(set(), READY_TIMEOUT_S)
            if kind == "failed":
                raise payload
            if kind == "lost":
                raise WorkerLostError(payload)
            if kind == "ready":
                records[number] = payload
        return [records[number] for number in range(len(self.processes))]

    def _next_message(self, known_lost: set[int], timeout: float) -> tuple[str, int, Any]:
        """The next message of any worker, or ("lost", number, why) for a worker that died without a word."""
        waited = 0.0
        while True:
            try:
                return self.messages.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
            for number, process in enumerate(self.processes):
                if process.exitcode is not None and number not in known_lost:
                    with contextlib.suppress(queue.Empty):  # its last words may still be in the pipe
                        return self.messages.get(timeout=1.0)
                    why = _exit_reason(process.exitcode)
                    return "lost", number, f"the worker on {self.config.devices[number]} died ({why})"
            if waited >= timeout:
                raise WorkerLostError(f"the workers sent nothing for {timeout:.0f} s")

    # --- a run ---------------------------------------------------------------------------------------------

    def extract(self, items: list[WorkItem], writer: StoreWriter, summary: RunSummary) -> None:
        assert self.provenance is not None, "prepare() starts the workers first"
        progress = progress_bar(len(items), self.config.progress)
        shares = split_items(items, len(self.processes))
        for inbox, share in zip(self.inboxes, shares, strict=True):
            inbox.put((writer.path, share))
        outcomes: dict[int, _Outcome] = {}
        lost: dict[int, str] = {}
        interrupt: BaseException | None = None
        try:
            while len(outcomes) + len(lost) < len(self.processes):
                try:
                    kind, number, payload = self._next_message(set(lost), float("inf"))
                except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM here: every worker commits, then we stop
                    interrupt = interrupt or error
                    self._forward(error, outcomes)
                    continue
                if kind == "progress":
                    progress.update(payload)
                elif kind == "done":
                    outcomes[number] = payload
                elif kind == "lost":
                    lost[number] = payload
                    log.error("%s; the other workers go on", payload)
        finally:
            progress.close()
            writer.close()  # the index, once, over every worker's parts
        for outcome in outcomes.values():
            _add(summary, outcome.summary)
        errors = [outcome.error for outcome in outcomes.values() if outcome.error is not None]
        if interrupt is not None:
            raise interrupt
        if lost:
            raise WorkerLostError(
                "; ".join(lost.values()) + "; the videos it had not committed are extracted by re-running the command"
            )
        if errors:
            raise errors[0]

    def _forward(self, interrupt: BaseException, outcomes: dict[int, _Outcome]) -> None:
        from extract.cli_common import is_sigterm

        sent = signal.SIGTERM if is_sigterm(interrupt) else signal.SIGINT
        for number, process in enumerate(self.processes):
            if number not in outcomes and process.exitcode is None:
                with contextlib.suppress(OSError):
                    os.kill(process.pid, sent)

    def close(self) -> None:
        for inbox in self.inboxes:
            with contextlib.suppress(Exception):
                inbox.put(None)
        for process in self.processes:
            process.join(timeout=STOP_GRACE_S)
            if process.exitcode is None:
                process.kill()
                process.join()
        self.inboxes, self.processes, self.provenance = [], [], None


def _add(total: RunSummary, part: RunSummary) -> None:
    total.done += part.done
    total.no_audio += part.no_audio
    total.truncated += part.truncated
    total.frames += part.frames
    total.units += part.units
    total.failures += part.failures
    total.committed_videos += part.committed_videos
    total.committed_failures += part.committed_failures


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _console_level() -> int:
    handlers = [h for h in logging.getLogger("img_vmr").handlers if type(h) is logging.StreamHandler]
    return handlers[0].level if handlers else logging.INFO


# --- inside a worker process ----------------------------------------------------------------------------------


class _Progress:
    def __init__(self, messages: Any, number: int) -> None:
        self.messages, self.number = messages, number

    def update(self, count: int = 1) -> None:
        self.messages.put(("progress", self.number, count))

    def close(self) -> None:
        pass


def _interrupts_once() -> None:
    """The first SIGINT / SIGTERM raises in the main thread; later ones are ignored while finished work is
    committed (the terminal and the parent may both send one)."""
    from extract.cli_common import Terminated

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _portable(error: BaseException) -> BaseException:
    """The error as the parent can unpickle it (our errors and the built-in ones are; others become one line)."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _worker_logging(spec: _WorkerSpec) -> None:
    root = logging.getLogger("img_vmr")
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler()
    console.setLevel(spec.console_level)
    console.setFormatter(logging.Formatter(f"img-extract[{spec.device}]: %(message)s"))
    root.addHandler(console)


def _worker_main(spec: _WorkerSpec, inbox: Any, messages: Any) -> None:
    _interrupts_once()
    _worker_logging(spec)
    try:
        import torch

        from extract.devices import resolve_device
        from extract.run.provenance import provenance_records

        torch.set_num_threads(spec.torch_threads)
        options = dataclasses.replace(spec.options, device=resolve_device(spec.device))
        extractors = [spec.build(preset, options) for preset in spec.presets]
        provenance = provenance_records(extractors)
    except BaseException as error:
        log.debug("loading the models failed", exc_info=True)
        messages.put(("failed", spec.number, _portable(error)))
        return
    messages.put(("ready", spec.number, provenance))
    with contextlib.suppress(KeyboardInterrupt):  # interrupted while idle: nothing to commit
        while (job := inbox.get()) is not None:
            store_path, items = job
            outcome = _run_share(spec, store_path, items, extractors, provenance, messages)
            messages.put(("done", spec.number, outcome))


def _run_share(
    spec: _WorkerSpec,
    store_path: Path,
    items: list[WorkItem],
    extractors: list[FeatureExtractor],
    provenance: dict[str, dict[str, Any]],
    messages: Any,
) -> _Outcome:
    from extract.log_file import attach_log_file
    from extract.run.engine_local import LocalEngine

    summary = RunSummary(total=len(items))
    writer: PartWriter | None = None
    log_file = None
    try:
        writer = PartWriter(store_path, provenance)
        log_file = attach_log_file(writer.parts_dir / "extract.log")
        if items:
            LocalEngine(items, extractors, writer, spec.config, summary, _Progress(messages, spec.number)).run()
        error = None
    except BaseException as caught:
        log.debug("the worker on %s stopped", spec.device, exc_info=True)
        error = _portable(caught) if not isinstance(caught, ImgVmrError | KeyboardInterrupt) else caught
    finally:
        if writer is not None:
            summary.committed_videos, summary.committed_failures = writer.committed_videos, writer.committed_failures
        if log_file is not None:
            logging.getLogger("img_vmr").removeHandler(log_file)
            log_file.close()
    return _Outcome(summary, error)
