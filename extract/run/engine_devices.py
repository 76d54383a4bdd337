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

Each worker talks to the parent over its own pipe (nothing shared: a worker killed in the middle of a message
cannot block the others), and the parent waits on those pipes and on the processes themselves, so a worker that
dies is noticed at once. Ctrl-C or SIGTERM (from a terminal, Slurm or Kubernetes, to the parent or to the whole
process group) reach every worker: the parent only records the signal and forwards it, waits until every worker
has reported (a worker that finished before the signal counts as finished), then writes the index and stops. A
worker that dies (killed, out of memory) loses only what it had not committed: the run stops with WorkerLostError
and the same command resumes. A worker whose parent dies (SIGKILL, out of memory) receives SIGTERM from the kernel
(Linux) or finds its pipe closed, commits its finished videos and exits: no worker outlives its parent.

Over 450 lines on purpose: the parent's side (DeviceWorkers) and the worker's side (_Parent, the signals) of
one pipe protocol read best side by side.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import re
import signal
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extract.core.child_process import end_with_parent
from extract.core.errors import ImgVmrError, UsageError, WorkerLostError
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.models.presets import Preset
from extract.run.collector import progress_bar
from extract.run.config import RunConfig
from extract.run.plan import WorkItem
from extract.run.provenance import check_same_recipes
from extract.run.summary import RunSummary
from extract.store import FeatureStore, PartWriter, StoreWriter, list_parts

log = logging.getLogger(f"img_vmr.{__name__}")

Build = Callable[[Preset, ExtractorOptions], FeatureExtractor]
READY_TIMEOUT_S = 1800.0  # model loading (a first download of weights included)
STOP_GRACE_S = 120.0  # after an interrupt: time for the workers to commit their finished videos
POLL_S = 1.0  # the parent's longest wait between looks at the clock
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
        if re.fullmatch(r"[0-9]+", entry):
            devices.append(f"cuda:{entry}")
        elif entry == "cpu" or re.fullmatch(r"cuda:[0-9]+", entry):
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
    parent_pid: int


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
        self.connections: list[Any] = []  # the parent's end of each worker's pipe
        self.processes: list[Any] = []
        self.provenance: dict[str, dict[str, Any]] | None = None

    # --- models --------------------------------------------------------------------------------------------

    def prepare(self) -> dict[str, dict[str, Any]]:
        if self.provenance is not None:
            return self.provenance
        threads = max(1, (os.cpu_count() or 1) // len(self.config.devices))
        level = _console_level()
        for number, device in enumerate(self.config.devices):
            spec = _WorkerSpec(
                number, device, self.presets, self.options, self.config, self.build, threads, level, os.getpid()
            )
            ours, theirs = self.context.Pipe()
            process = self.context.Process(target=_worker_main, args=(spec, theirs), name=f"extract-{device}")
            process.daemon = True  # a parent that exits normally takes its workers along
            process.start()
            theirs.close()  # only the worker holds its end: the parent's death closes the pipe for the worker
            self.connections.append(ours)
            self.processes.append(process)
        try:
            records = self._await_ready()
            check_same_recipes(
                list(zip(self.config.devices, records, strict=True)), "give devices of one kind to --devices"
            )
        except BaseException:
            self.close()
            raise
        self.provenance = records[0]
        return records[0]

    def recipes_without_models(self) -> dict[str, dict[str, Any]] | None:
        """None: each worker resolves its own device (CUDA is never started in this process) and the workers'
        recipes are compared with each other once they are loaded."""
        return None

    def _await_ready(self) -> list[dict[str, dict[str, Any]]]:
        records: dict[int, dict[str, dict[str, Any]]] = {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(records) < len(self.processes):
            waiting = set(range(len(self.processes))) - set(records)
            message = self._next_message(waiting, POLL_S)
            if message is None:
                if time.monotonic() > deadline:
                    raise WorkerLostError(f"the workers did not load their models within {READY_TIMEOUT_S:.0f} s")
                continue
            kind, number, payload = message
            if kind == "failed":
                raise payload
            if kind == "lost":
                raise WorkerLostError(payload)
            if kind == "ready":
                records[number] = payload
        return [records[number] for number in range(len(self.processes))]

    def _next_message(self, waiting: Collection[int], timeout: float) -> tuple[str, int, Any] | None:
        """The next message of a worker in `waiting`, ("lost", number, why) for one of them that died without a
        word, or None when none spoke within `timeout` seconds."""
        pipes = {self.connections[number]: number for number in waiting}
        ends = {self.processes[number].sentinel: number for number in waiting}
        ready = mp.connection.wait([*pipes, *ends], timeout)
        for pipe in (obj for obj in ready if obj in pipes):
            try:
                return pipe.recv()
            except (EOFError, OSError):  # its end is closed: it died, its exit status says how
                return self._lost(pipes[pipe])
        for end in ready:
            number = ends[end]
            if self.connections[number].poll():  # its last words came after the wait looked
                return self._next_message([number], 0)
            return self._lost(number)
        return None

    def _lost(self, number: int) -> tuple[str, int, str]:
        process = self.processes[number]
        process.join(timeout=POLL_S)
        why = _exit_reason(process.exitcode) if process.exitcode is not None else "its pipe closed"
        return "lost", number, f"the worker on {self.config.devices[number]} died ({why})"

    # --- a run ---------------------------------------------------------------------------------------------

    def extract(self, items: list[WorkItem], writer: StoreWriter, summary: RunSummary) -> None:
        assert self.provenance is not None, "prepare() starts the workers first"
        progress = progress_bar(len(items), self.config.progress)
        before = set(list_parts(writer.parts_dir))
        outcomes: dict[int, _Outcome] = {}
        lost: dict[int, str] = {}
        waiting = set(range(len(self.processes)))  # the workers this run has not heard the end of
        with _StopSignals(self, waiting) as stop:
            try:
                for number, share in enumerate(split_items(items, len(self.processes))):
                    self._send(number, (writer.path, share), lost, waiting)
                while waiting:
                    message = self._next_message(waiting, POLL_S)
                    if message is None:
                        if stop.overdue():
                            for number in sorted(waiting):
                                self.processes[number].kill()
                                lost[number] = (
                                    f"the worker on {self.config.devices[number]} did not stop within "
                                    f"{STOP_GRACE_S:.0f} s of the interrupt and was killed"
                                )
                            waiting.clear()
                        continue
                    kind, number, payload = message
                    if kind == "progress":
                        progress.update(payload)
                    elif kind == "done":
                        outcomes[number] = payload
                        waiting.discard(number)
                    elif kind == "lost":
                        lost[number] = payload
                        waiting.discard(number)
                        log.error("%s; the other workers go on", payload)
            finally:
                progress.close()
                writer.close()  # the index, once, over every worker's parts
        for outcome in outcomes.values():
            _add(summary, outcome.summary)
        # what really reached the disk, a lost worker's parts included
        summary.committed_videos, summary.committed_failures = self._committed(writer, before)
        errors = [outcome.error for outcome in outcomes.values() if outcome.error is not None]
        if stop.signal is not None:
            from extract.core.console import Terminated

            raise Terminated() if stop.signal == signal.SIGTERM else KeyboardInterrupt()
        if lost:
            raise WorkerLostError(
                "; ".join(lost.values()) + "; the videos it had not committed are extracted by re-running the command"
            )
        if errors:
            raise errors[0]

    def _send(self, number: int, job: Any, lost: dict[int, str], waiting: set[int]) -> None:
        try:
            self.connections[number].send(job)
        except OSError:  # it died since the last run
            lost[number] = self._lost(number)[2]
            waiting.discard(number)

    def _committed(self, writer: StoreWriter, before: set[Any]) -> tuple[int, int]:
        """Videos and failures in the parts this run's workers committed (found by their writer's pid)."""
        pids = {process.pid for process in self.processes}
        ours = [part for part in list_parts(writer.parts_dir) if part not in before and _writer_pid(part) in pids]
        if not ours:
            return 0, 0
        with FeatureStore(writer.path, parts=ours) as view:
            return len(view), len(view.failures())

    def close(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.send(None)
        for process in self.processes:
            process.join(timeout=STOP_GRACE_S)
            if process.exitcode is None:
                process.kill()
                process.join()
        for connection in self.connections:
            connection.close()
        self.connections, self.processes, self.provenance = [], [], None


class _StopSignals:
    """During a run, SIGINT and SIGTERM are recorded and forwarded to the workers still working, never raised in
    the middle of the parent's bookkeeping: the run goes on until every worker has reported, then stops."""

    def __init__(self, workers: DeviceWorkers, waiting: set[int]) -> None:
        self.workers, self.waiting = workers, waiting
        self.signal: int | None = None
        self.since = 0.0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self._received) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self.previous.items():  # the signal that stopped the run: ignored while closing
            signal.signal(number, signal.SIG_IGN if number == self.signal else handler)

    def _received(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal, self.since = signum, time.monotonic()
            log.warning("stopping: the workers commit their finished videos")
        for number in list(self.waiting):
            with contextlib.suppress(OSError):
                os.kill(self.workers.processes[number].pid, signum)

    def overdue(self) -> bool:
        return self.signal is not None and time.monotonic() - self.since > STOP_GRACE_S


def _writer_pid(part: Any) -> int | None:
    import h5py

    try:
        with h5py.File(part, "r", locking=False) as f:
            return int(f.attrs["writer_pid"])
    except (OSError, KeyError, ValueError):
        return None


def _add(total: RunSummary, part: RunSummary) -> None:
    total.done += part.done
    total.no_audio += part.no_audio
    total.truncated += part.truncated
    total.frames += part.frames
    total.units += part.units
    total.failures += part.failures


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _console_level() -> int:
    handlers = [h for h in logging.getLogger("img_vmr").handlers if type(h) is logging.StreamHandler]
    return handlers[0].level if handlers else logging.INFO


# --- inside a worker process ----------------------------------------------------------------------------------


class _Parent:
    """The worker's end of its pipe. Messages are sent with SIGINT/SIGTERM held back, so an interrupt never cuts
    one in half; a closed pipe means the parent is gone, and the worker stops as if terminated."""

    def __init__(self, connection: Any, number: int) -> None:
        self.connection, self.number = connection, number

    def send(self, kind: str, payload: Any) -> None:
        from extract.core.console import Terminated

        try:
            with _signals_held():
                self.connection.send((kind, self.number, payload))
        except OSError:
            raise Terminated() from None

    def update(self, count: int = 1) -> None:  # the engine's progress bar
        self.send("progress", count)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _stop_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to send this worker SIGTERM when its parent dies (Linux), so it commits its finished videos
    and exits instead of writing on without the parent; False when the parent is gone already. (The kernel
    watches the parent's thread that started the worker: ExtractionRun starts them in the thread that runs it.)"""
    return end_with_parent(parent_pid, signal.SIGTERM)


def _interrupts_once() -> None:
    """The first SIGINT / SIGTERM raises in the main thread; later ones are ignored while finished work is
    committed (the terminal and the parent may both send one)."""
    from extract.core.console import Terminated

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


def _worker_main(spec: _WorkerSpec, connection: Any) -> None:
    _interrupts_once()
    if not _stop_with_parent(spec.parent_pid):
        return
    _worker_logging(spec)
    parent = _Parent(connection, spec.number)
    # interrupted while idle, or the parent gone (SIGTERM from the kernel, its pipe closed): nothing to commit
    with contextlib.suppress(KeyboardInterrupt, EOFError, OSError):
        try:
            import torch

            from extract.run.provenance import load_models

            torch.set_num_threads(spec.torch_threads)
            extractors, provenance = load_models(spec.presets, spec.options, spec.build, spec.device)
        except BaseException as error:
            log.debug("loading the models failed", exc_info=True)
            parent.send("failed", _portable(error))
            return
        parent.send("ready", provenance)
        while (job := connection.recv()) is not None:
            store_path, items = job
            parent.send("done", _run_share(spec, store_path, items, extractors, provenance, parent))


def _run_share(
    spec: _WorkerSpec,
    store_path: Path,
    items: list[WorkItem],
    extractors: list[FeatureExtractor],
    provenance: dict[str, dict[str, Any]],
    parent: _Parent,
) -> _Outcome:
    from extract.core.console import attach_log_file
    from extract.run.engine_local import LocalEngine

    summary = RunSummary(total=len(items))
    log_file = None
    try:
        writer = PartWriter(store_path, provenance)
        log_file = attach_log_file(writer.parts_dir / "extract.log")
        if items:
            LocalEngine(items, extractors, writer, spec.config, summary, parent).run()
        error = None
    except BaseException as caught:
        log.debug("the worker on %s stopped", spec.device, exc_info=True)
        error = _portable(caught) if not isinstance(caught, ImgVmrError | KeyboardInterrupt) else caught
    finally:
        if log_file is not None:
            logging.getLogger("img_vmr").removeHandler(log_file)
            log_file.close()
    return _Outcome(summary, error)
