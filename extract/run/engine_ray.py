"""The Ray engine (`--engine ray`): decode as CPU tasks, models as an actor pool, parts written by the driver.

    driver (img-extract)                          the cluster
      plan, store lock                            decode_video(item)   one generator task per video (0.99 CPU)
      Collector: VideoAssembly, Batcher    <--    (payload, event) pairs; payloads stay in the object store
      batches of RemoteRows               -->     ModelWorker.embed     one actor per GPU (1 GPU, 0 CPU), or one
      Commit on a writer thread           <--       rows + failures      on CPUs (0.01 CPU); models loaded once
      -> immutable parts, index at the end

Ray core rather than Ray Data: benchmarks/bench_engines.py measured both on the same work (docs/engines.md, "Ray").
The stages, the Batcher, VideoAssembly (via Collector) and the Commit stage are the local engine's own.

Exactly once. A video's records reach the writer once, when all its tracks are settled (Collector). When Ray loses
a worker (a decode task's process or node, a model actor, an object with its node), every video whose events
or batch were lost starts again as a new attempt (`WorkItem.attempt`): what was collected for it is dropped, and
events of older attempts are ignored, so no row is counted twice. After `RunConfig.attempts` tries the video
becomes a failure record; a loss that came with a lost node (lost_with_a_node) is not counted as a try, up to
NODE_LOSS_RESTARTS more restarts (one node loss can cost a video its decode task and its batch). A running
decode task silent for `RunConfig.stall_seconds` is lost the same way: the driver never blocks on one task or
actor, it waits on all of them at once. The driver commits parts itself (features are far smaller than the
frames), so the store only needs to be on the driver's disk, and a driver killed at any moment leaves committed
parts only: the same command resumes from them.

Resources: what Ray reserves for whom, so that a lost node can never leave a run waiting forever. Ray's CPU is a
scheduling token, not a core: a model actor holds its tokens for its whole life, a decode task while it runs. A
CPU model actor that held a whole token hung the run once the cluster had one CPU left (two one-CPU nodes, one
lost): the actor held the only token and no decode task could ever start. So the asks are chosen to fit on any
node that has CPUs, whatever else runs there:
    decode task       DECODE_CPUS (0.99): a node of C CPUs runs C of them at a time (any C up to 98), as whole
                      CPUs would, and keeps 0.01 x C of its tokens free
    CPU model actor   CPU_MODEL_CPUS (0.01): fits in what decode tasks leave free on any node with a CPU, and
                      leaves room for one decode task per CPU beside it; restarted by Ray on the nodes that remain
    GPU model actor   1 GPU and 0 CPU: never competes with decode tasks
Fractional tokens rather than a placement group: a placement group's bundles are themselves whole reservations
that must all be placed again when their node is lost, which brings back the same wait; and an actor asking no
CPU at all could be placed on a head node started with --num-cpus 0, which is there to stay free. The model
actor's real CPU use is reserved by the driver instead: it runs one decode task per CPU of the live cluster, less
one per CPU model actor (at least one), re-read every RESOURCES_REFRESH_S as nodes leave and join.

Nothing waits silently. Lost decode tasks are started again by the driver (a new attempt) wherever Ray finds a
CPU; a lost model actor is restarted by Ray. A run in which nothing progresses (no decoded object, no embedded
batch) says so after NO_PROGRESS_REPORT_S (or half of `stall_seconds`), naming what it waits for and the
cluster's free resources, again every NO_PROGRESS_REPEAT_S, and after `stall_seconds` (--stall-seconds) stops
with WorkerLostError: the finished videos are committed and the same command resumes once the cluster has room.

Over 450 lines, with `_DriverLoop` one class over 200, on purpose: the driver's methods read and update one
bookkeeping of the decode tasks and batches in flight, their attempts, the node losses and the collector.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from extract.core.errors import ImgVmrError, UsageError, WorkerLostError
from extract.models.base import ExtractorOptions, Units
from extract.models.presets import Preset
from extract.run.batcher import Batcher, UnitBatch
from extract.run.collector import Collector, progress_bar
from extract.run.config import RunConfig
from extract.run.engine_local import PARTIAL_BATCH_WAIT_S, WriterThread, batch_sizes
from extract.run.events import Embedded, Failed, UnitsReady
from extract.run.plan import WorkItem
from extract.run.provenance import check_same_recipes
from extract.run.ray_workers import Description, ModelWorker, RemoteRows, decode_video, one_line
from extract.run.stages import Commit
from extract.run.summary import RunSummary
from extract.store import StoreWriter

log = logging.getLogger(f"img_vmr.{__name__}")

RAY_MISSING = 'the Ray engine needs Ray, an optional extra: pip install -e ".[ray]" (or pip install "ray[data]")'
ACTOR_RESTARTS = 4  # Ray restarts a lost model actor (loading its models again) this many times
BATCH_RETRIES = 2  # Ray sends a batch lost with its actor to the restarted actor this many times
BATCHES_PER_ACTOR = 2  # in flight per actor: one computing, one arriving
DECODE_BACKPRESSURE = 16  # objects a decode task may yield ahead of the driver (8 events)
PENDING_BATCHES_PER_ACTOR = 4  # queued units per actor, in batches, before the driver stops reading decoders
ACTORS_READY_S = 1800.0  # model actors placed and their models loaded (a first download of weights included)
ACTORS_WAIT_REPORT_S = 60.0  # how often the driver says it is still waiting for them
DECODE_CPUS = 0.99  # a decode task's CPU ask; CPU_MODEL_CPUS a CPU model actor's (module doc, "Resources")
CPU_MODEL_CPUS = 0.01
RESOURCES_REFRESH_S = 5.0  # how often the driver re-reads the live cluster's CPUs (nodes lost or joined)
NO_PROGRESS_REPORT_S = 30.0  # a run without progress says what it waits for after this long (or stall_seconds/2)
NO_PROGRESS_REPEAT_S = 60.0  # and again this often until it progresses or stall_seconds end it
NODE_LOSS_RESTARTS = 5  # restarts of a video for lost nodes (not counted as tries) beyond its tries, at most


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


def connect(address: str | None) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local one; True when we started it.

    A process that is already connected (a test, a notebook) keeps its connection.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None and "ray" not in sys.modules:
        # A cluster private to this process: its servers listen on the loopback address only (read at import).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = import_ray()
    if ray.is_initialized():
        return False
    with sigterm_handler_kept(ray):
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:  # "local": a new cluster of our own, never one a `ray start` left running on this machine
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    return not address


@contextlib.contextmanager
def sigterm_handler_kept(ray: Any) -> Iterator[None]:
    """Within the block (a ray.init), a SIGTERM waits for its end, then reaches the handler installed before it.

    ray.init replaces that handler at once with a bare sys.exit (exit status 15, no message, nothing said about
    what was committed), and Ray's C++ core installs its crash handler for SIGTERM too (a stack dump and an abort,
    exit 134), until the caller puts its own back: a SIGTERM in between ended img-extract that way. And a SIGTERM
    handled inside ray.init leaves Ray half started (the process then crashed on its way out, exit -11). So for
    the block: a handler that only records a SIGTERM is installed first, before anything can deliver one; Ray's
    own attempts to set a SIGTERM handler from this thread are answered but not applied; the C++ crash handler
    is not installed in this process (ray_constants' RAY_DISABLE_FAILURE_SIGNAL_HANDLER, read when the driver's
    core starts; Ray's workers keep theirs). At the end the previous handler is back, and a SIGTERM that came
    meanwhile is passed on to it if it is a function (img-extract's: commit, exit 143), given its default action
    if that was the handler, and dropped if SIGTERM was ignored. Only the main thread can set handlers; elsewhere
    the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from ray._private import ray_constants

    install = signal.signal
    received: list[int] = []

    def record(signum: int, frame: Any) -> None:
        received.append(signum)

    def keep_sigterm(signalnum: int, handler: Any) -> Any:
        if signalnum == signal.SIGTERM and threading.current_thread() is threading.main_thread():
            return previous
        return install(signalnum, handler)

    crash_handler_disabled = ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    previous = install(signal.SIGTERM, record)
    signal.signal = keep_sigterm
    try:
        yield
    finally:
        signal.signal = install
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = crash_handler_disabled
        install(signal.SIGTERM, previous)
        if received:
            if callable(previous):
                previous(signal.SIGTERM, None)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGTERM)


def unwrap(error: BaseException) -> BaseException:
    """Our own error inside a Ray task error (it names the failed task and its traceback), else the error."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, ImgVmrError) else error


def lost_with_a_node(ray: Any, error: BaseException) -> bool:
    """Whether a worker was lost because its node (or the node of the objects it read) was: the task's node died,
    the model actor was unreachable while Ray moved or restarted it, or a video's decoded frames went with their
    node. Such a loss says nothing about the video, so it does not count among its tries; a decode process that
    died, an actor that died, a stall may be the video's doing and count."""
    exceptions = ray.exceptions
    lost = (exceptions.NodeDiedError, exceptions.ActorUnavailableError, exceptions.ObjectLostError)
    return isinstance(error, lost) or isinstance(getattr(error, "cause", None), lost)


def decode_task(ray: Any) -> Any:
    """decode_video as the driver submits it: one try (the driver starts a lost video again itself), the CPU ask
    of the module doc's "Resources", a bounded number of objects ahead of the driver."""
    return ray.remote(decode_video).options(
        num_cpus=DECODE_CPUS, max_retries=0, _generator_backpressure_num_objects=DECODE_BACKPRESSURE
    )


def cancel_decode(ray: Any, generator: Any) -> None:
    """Stop a decode task by ending its worker process (force=True).

    Ray's gentle cancel interrupts the task's main thread as SIGINT would. That cannot stop a decoder blocked in a
    native call, and arriving while the worker still reads the task's arguments it fails inside Ray: Ray defers
    the interrupt until the arguments are read, then calls the worker's saved SIGINT handler, which in a cluster
    started in the background (nohup, `&`, a batch job, a CI runner: every process inherits SIGINT ignored) is
    signal.SIG_IGN, as a function. The task then ends with "TypeError: 'Handlers' object is not callable" instead
    of being cancelled: the error issue 15 saw at the end of a SIGTERMed driver's output. A worker process ended
    from outside runs no Python at all; Ray starts a new one for the next task.
    """
    try:
        ray.cancel(generator, force=True)
    except Exception:
        log.debug("cancelling a decode task failed", exc_info=True)


def describe_asks(asks: dict[str, float]) -> str:
    """'1 GPU and 0 CPU', '0 GPU and 0.01 CPU': what one model actor asks the cluster for."""
    return f"{asks.get('num_gpus', 0):g} GPU and {asks.get('num_cpus', 0):g} CPU"


def cluster_fits(ray: Any, asks: dict[str, float]) -> bool:
    """Whether some live node has the resources an actor asks for, in total (they may be taken now)."""
    try:
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    except Exception:
        return True  # unknown: keep waiting, the longer limit applies
    return any(
        node.get("CPU", 0) >= asks.get("num_cpus", 0) and node.get("GPU", 0) >= asks.get("num_gpus", 0)
        for node in nodes
    )


def cluster_free(ray: Any) -> str:
    """What the live cluster has free, for a line that says why something waits."""
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    except Exception as error:  # the cluster did not answer: say so rather than fail the report
        return f"the cluster's resources could not be read ({one_line(error)})"
    amounts = ", ".join(
        f"{free.get(name, 0):g} of {total.get(name, 0):g} {name}" for name in ("CPU", "GPU") if total.get(name)
    )
    return f"the cluster has {amounts or 'no CPU and no GPU'} free on {nodes} live node{'s' * (nodes != 1)}"


class RayEngine:
    """Models as Ray actors (loaded once, kept across runs), a driver loop per run; see the module doc."""

    def __init__(
        self,
        presets: Sequence[Preset],
        options: ExtractorOptions,
        config: RunConfig,
        build: Any,
    ) -> None:
        self.presets, self.options, self.config, self.build = list(presets), options, config, build
        self.actors: list[Any] = []
        self.description: Description | None = None
        self.started = False
        # This engine opened the process's connection (not a test or notebook that holds its own): close() ends
        # it, so that nothing Ray forwards (raylet warnings) prints after the run's last line.
        self.connected = False
        self.cpu_actors = 0  # model actors on CPUs: their compute is kept free of decode tasks (module doc)
        self.actor_asks: dict[str, float] = {}
        self.actors_ready_s = ACTORS_READY_S

    def recipes_without_models(self) -> dict[str, dict[str, Any]] | None:
        """None: the models' devices and weights files are the cluster's, known once its actors have loaded them."""
        return None

    def prepare(self) -> dict[str, dict[str, Any]]:
        if self.description is not None:
            return self.description.provenance
        ray_module = sys.modules.get("ray")  # not imported here: connect() sets what Ray reads at import first
        held_before = ray_module is not None and ray_module.is_initialized()
        self.started = connect(self.config.ray_address)
        self.connected = not held_before
        ray = import_ray()
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        spec = self.config.ray_device
        if spec == "cuda" and gpus == 0:
            raise UsageError("--device cuda: the Ray cluster has no GPU; use --device auto or cpu")
        on_gpus = gpus > 0 and spec != "cpu"
        count = gpus if on_gpus else 1
        # the asks that let actors and decode tasks share any node (module doc, "Resources")
        asks = {"num_gpus": 1, "num_cpus": 0} if on_gpus else {"num_gpus": 0, "num_cpus": CPU_MODEL_CPUS}
        self.actor_asks, self.cpu_actors = asks, 0 if on_gpus else count
        actor = ray.remote(ModelWorker).options(
            **asks,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=BATCH_RETRIES,  # then the driver starts the batch's videos again (module doc)
        )
        self.actors = [actor.remote(self.presets, self.options, spec, self.build) for _ in range(count)]
        try:
            descriptions = self._describe(asks)
            check_same_recipes(
                [(d.device, d.provenance) for d in descriptions], "use --device cpu or a cluster of one GPU kind"
            )
        except BaseException as error:
            self.close()
            if isinstance(error, Exception):
                raise unwrap(error) from None
            raise
        first = descriptions[0]
        self.description = first
        log.info(
            "Ray: %d model actor%s on %s, %d decode tasks at a time (%g CPUs, %d GPUs in the cluster)",
            count,
            "s" * (count != 1),
            ", ".join(sorted({d.device for d in descriptions})),
            self.decode_slots(cpus),
            resources.get("CPU", 0),
            gpus,
        )
        return first.provenance

    def decode_slots(self, cpus: float) -> int:
        """Decode tasks at a time on a cluster of `cpus` CPUs: one per CPU, less one per CPU model actor, at least
        one (module doc, "Resources")."""
        return max(1, math.floor(cpus + 1e-6) - self.cpu_actors)

    def _describe(self, asks: dict[str, float]) -> list[Description]:
        """Every actor's description once its models are loaded; an actor the cluster cannot place (its resources
        are taken) would make ray.get wait forever: we wait ACTORS_READY_S, saying what they wait for."""
        ray = import_ray()
        pending = {worker.describe.remote(): number for number, worker in enumerate(self.actors)}
        found: dict[int, Description] = {}
        started = time.monotonic()
        while pending:
            left = self.actors_ready_s - (time.monotonic() - started)
            timeout = max(0.1, min(ACTORS_WAIT_REPORT_S, left))
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout)
            for ref in ready:
                found[pending.pop(ref)] = ray.get(ref)
            waited = time.monotonic() - started
            if pending and waited >= self.config.stall_seconds and not cluster_fits(ray, asks):
                raise WorkerLostError(
                    f"{len(pending)} of {len(self.actors)} model actors could not be placed for {waited:.0f} s "
                    f"(--stall-seconds): each asks the Ray cluster for {describe_asks(asks)}; {cluster_free(ray)}"
                )
            if pending and waited >= self.actors_ready_s:
                raise WorkerLostError(
                    f"{len(pending)} of {len(self.actors)} model actors did not start within {waited:.0f} s; each "
                    f"asks the Ray cluster for {describe_asks(asks)}; {cluster_free(ray)} "
                    "(`ray status` shows more)"
                )
            if pending:
                log.info(
                    "Ray: waiting for %d model actors (%.0f s so far); each asks %s; %s",
                    len(pending),
                    waited,
                    describe_asks(asks),
                    cluster_free(ray),
                )
        return [found[number] for number in range(len(self.actors))]

    def extract(self, items: list[WorkItem], writer: StoreWriter, summary: RunSummary) -> None:
        assert self.description is not None, "prepare() starts the actors first"
        _DriverLoop(self, items, writer, summary).run()

    def close(self) -> None:
        if not self.actors and not self.started and not self.connected:
            return
        ray = import_ray()
        for worker in self.actors:
            try:
                ray.kill(worker)
            except Exception:
                log.debug("killing a model actor failed", exc_info=True)
        self.actors, self.description = [], None
        if self.started or self.connected:  # a cluster of our own stops with it; a joined one is only left
            ray.shutdown()
            self.started = self.connected = False


@dataclass
class _Decode:
    item: WorkItem
    payload: Any = None  # the first object of a pair, until its event arrives
    expect_event: bool = False
    heard: float | None = None  # its last object (None until its first: it may wait for a CPU of the cluster)


@dataclass
class _Flight:
    actor: int
    batch: UnitBatch[WorkItem]


@dataclass
class _ActorState:
    load: int = 0  # batches in flight
    dead: bool = False  # Ray gave up restarting it
    probe: Any = None  # after a lost batch: the call that tells a restarted actor from a dead one


@dataclass
class _Limits:
    slots: int  # decode tasks at a time
    pending_units: int  # units queued on the driver before it stops reading decode tasks
    read_at: float  # when `slots` was computed from the live cluster's CPUs


class _DriverLoop:
    """One run on the cluster: decode tasks in, batches out, records to the writer."""

    def __init__(self, engine: RayEngine, items: list[WorkItem], writer: StoreWriter, summary: RunSummary) -> None:
        self.ray = import_ray()
        assert engine.description is not None
        self.engine, self.config = engine, engine.config
        description = engine.description
        sizes = batch_sizes(description.max_batch, self.config)
        pending_units = PENDING_BATCHES_PER_ACTOR * len(engine.actors) * max(sizes.values())
        self.limits = _Limits(1, pending_units, -math.inf)
        self.batcher: Batcher[WorkItem] = Batcher(sizes)
        self.writer = WriterThread(Commit(writer, self.config.commit_every, self.config.commit_seconds))
        self.progress = progress_bar(len(items), self.config.progress)
        self.collector = Collector(items, self.batcher, self.writer.put, summary, self.progress)
        self.todo: deque[WorkItem] = deque(items)
        self.decoding: dict[Any, _Decode] = {}
        self.formed: deque[UnitBatch[WorkItem]] = deque()
        self.inflight: dict[Any, _Flight] = {}
        self.probes: dict[Any, int] = {}  # probe call -> actor number
        self.actors = [_ActorState() for _ in engine.actors]
        self.decode = decode_task(self.ray)
        self.views = self.ray.put(description.views)
        self.tries: dict[str, int] = {}  # counted losses per video (a loss with a node does not count)
        self.progressed = time.monotonic()  # the last decoded object, embedded batch or actor answer
        self.reported: float | None = None  # when the current stretch without progress was last reported

    def run(self) -> None:
        self.writer.start()
        try:
            self._loop()
        finally:
            for generator in self.decoding:
                self._cancel(generator)
            self.progress.close()
            self.writer.finish()  # commits every finished video (also when interrupted); raises a write error

    # --- the loop ------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while self.todo or self.decoding or self.batcher.pending() or self.formed or self.inflight:
            self._refresh_slots()
            self._submit_decodes()
            decoding_done = not self.todo and not self.decoding
            self._form(flush=decoding_done)
            self._dispatch()
            reading = self.batcher.pending() + sum(map(len, self.formed)) < self.limits.pending_units
            self._check_stalls(reading)
            self._check_progress()
            waitables = (list(self.decoding) if reading else []) + list(self.inflight) + list(self.probes)
            if not waitables:
                if self.batcher.pending() or self.formed:
                    self._form(flush=True)
                    self._dispatch()
                    if not self.inflight:
                        raise WorkerLostError("every model actor was lost; re-run the same command to resume")
                continue
            ready, _ = self.ray.wait(waitables, num_returns=1, timeout=PARTIAL_BATCH_WAIT_S)
            if not ready:  # quiet for a while: embed what is queued
                self._form(flush=True)
            if ready:
                self._progress()
            for waitable in ready:
                if waitable in self.decoding:
                    self._read_decode(waitable)
                elif waitable in self.probes:
                    self._read_probe(waitable)
                else:
                    self._read_batch(waitable)
            self.writer.raise_if_failed()
        self.collector.close()

    def _refresh_slots(self) -> None:
        """Decode tasks at a time, from the live cluster's CPUs (nodes are lost and join during a run)."""
        now = time.monotonic()
        if now - self.limits.read_at < RESOURCES_REFRESH_S:
            return
        first = not math.isfinite(self.limits.read_at)
        self.limits.read_at = now
        try:
            cpus = self.ray.cluster_resources().get("CPU", 0)
        except Exception:
            log.debug("reading the cluster's resources failed", exc_info=True)
            return
        slots = self.engine.decode_slots(cpus)
        if slots != self.limits.slots and not first:
            log.info("Ray: %d decode tasks at a time from now on (%g CPUs in the cluster)", slots, cpus)
        self.limits.slots = slots

    # --- progress ------------------------------------------------------------------------------------------

    def _progress(self) -> None:
        self.progressed, self.reported = time.monotonic(), None

    def _check_progress(self) -> None:
        """A run in which nothing progresses says what it waits for, then stops after stall_seconds (module doc)."""
        now = time.monotonic()
        quiet = now - self.progressed
        if quiet >= self.config.stall_seconds:
            raise WorkerLostError(
                f"no progress on the Ray cluster for {quiet:.0f} s (--stall-seconds {self.config.stall_seconds:g}):"
                f" {self._waiting_for()}; re-run the same command to resume once the cluster has room"
            )
        if quiet >= min(NO_PROGRESS_REPORT_S, self.config.stall_seconds / 2) and (
            self.reported is None or now - self.reported >= NO_PROGRESS_REPEAT_S
        ):
            self.reported = now
            log.warning(
                "Ray: no progress for %.0f s: %s; the run stops after %g s without progress (--stall-seconds)",
                quiet,
                self._waiting_for(),
                self.config.stall_seconds,
            )

    def _waiting_for(self) -> str:
        """What the driver waits for, and what the cluster has free."""
        waits = []
        starting = sum(1 for decode in self.decoding.values() if decode.heard is None)
        if starting:
            waits.append(f"{starting} decode task{'s' * (starting != 1)} to start (each asks {DECODE_CPUS:g} CPU)")
        if len(self.decoding) > starting:
            running = len(self.decoding) - starting
            waits.append(f"{running} running decode task{'s' * (running != 1)}")
        if self.inflight:
            waits.append(f"{len(self.inflight)} batch{'es' * (len(self.inflight) != 1)} on the model actors")
        for number, state in self._actor_states().items():
            waits.append(f"model actor {number} ({state.lower()}; asks {describe_asks(self.engine.actor_asks)})")
        if not waits:
            waits.append("nothing it started (a bug: please report it)")
        return f"waiting for {', '.join(waits)}; {cluster_free(self.ray)}"

    def _actor_states(self) -> dict[int, str]:
        """The model actors that are not alive, by number: their state as Ray's GCS has it (RESTARTING,
        PENDING_CREATION, DEAD)."""
        states = {}
        for number, handle in enumerate(self.engine.actors):
            if self.actors[number].dead:
                states[number] = "DEAD"
                continue
            try:
                from ray._private import state

                found = state.actors(actor_id=handle._actor_id.hex()).get("State", "ALIVE")
            except Exception:  # a private API of Ray: without it, the report names fewer things
                log.debug("reading a model actor's state failed", exc_info=True)
                continue
            if found != "ALIVE":
                states[number] = found
        return states

    def _submit_decodes(self) -> None:
        while self.todo and len(self.decoding) < self.limits.slots:
            item = self.todo.popleft()
            if self.collector.current(item):
                self.decoding[self.decode.remote(item, self.views)] = _Decode(item)

    def _form(self, flush: bool) -> None:
        self.formed.extend(self.batcher.all_batches() if flush else self.batcher.full_batches())

    def _dispatch(self) -> None:
        while self.formed:
            free = [
                n for n, a in enumerate(self.actors) if not a.dead and a.probe is None and a.load < BATCHES_PER_ACTOR
            ]
            if not free:
                return
            number = min(free, key=lambda n: self.actors[n].load)
            batch = self.formed.popleft()
            self.inflight[self.engine.actors[number].embed.remote(batch)] = _Flight(number, batch)
            self.actors[number].load += 1

    # --- decode tasks --------------------------------------------------------------------------------------

    def _check_stalls(self, reading: bool) -> None:
        """A running decode task silent for stall_seconds (a hung decoder, a node that stopped answering) loses its
        video: it starts again, or fails after its last try. Time the driver held the tasks up does not count, nor
        the time before a task's first object (waiting for a CPU, a worker process starting)."""
        now = time.monotonic()
        for generator, decode in list(self.decoding.items()):
            if decode.heard is None:
                continue
            if not reading:
                decode.heard = now
            elif now - decode.heard > self.config.stall_seconds:
                del self.decoding[generator]
                self._cancel(generator)
                silent = WorkerLostError(f"no decoding progress for {self.config.stall_seconds:.0f} s")
                self._lost(decode.item, silent, "decode")

    def _cancel(self, generator: Any) -> None:
        cancel_decode(self.ray, generator)

    def _read_decode(self, generator: Any) -> None:
        decode = self.decoding[generator]
        decode.heard = time.monotonic()
        try:
            ref = next(generator)
        except StopIteration:
            del self.decoding[generator]
            if decode.expect_event:  # the task's last object is its error
                try:
                    self.ray.get(decode.payload)
                except Exception as error:
                    self._lost(decode.item, error, "decode")
            return
        if not decode.expect_event:
            decode.payload, decode.expect_event = ref, True
            return
        payload, decode.payload, decode.expect_event = decode.payload, None, False
        try:
            event = self.ray.get(ref)
        except Exception as error:
            del self.decoding[generator]
            self._lost(decode.item, error, "decode")
            return
        if isinstance(event, Failed):
            if self.collector.current(decode.item):
                self.collector.handle(event)
            return
        if not self.collector.current(event.item):
            return
        if isinstance(event, UnitsReady):
            count = len(event.units)
            event = UnitsReady(event.item, event.feature, Units(RemoteRows(payload, 0, count), event.units.spans))
        self.collector.handle(event)

    # --- model actors --------------------------------------------------------------------------------------

    def _read_batch(self, ref: Any) -> None:
        flight = self.inflight.pop(ref)
        actor = self.actors[flight.actor]
        actor.load -= 1
        try:
            results: list[Embedded | Failed] = self.ray.get(ref)
        except Exception as error:
            if isinstance(error, self.ray.exceptions.RayActorError) and not actor.dead and actor.probe is None:
                actor.probe = self.engine.actors[flight.actor].pid.remote()  # answered once Ray restarted it
                self.probes[actor.probe] = flight.actor
            for item in dict.fromkeys(piece.key for piece in flight.batch.pieces):
                self._lost(item, error, "compute")
            return
        items = {piece.key.video_id: piece.key for piece in flight.batch.pieces}
        for result in results:
            item = result.item if isinstance(result, Embedded) else items[result.record.video_id]
            if self.collector.current(item):
                self.collector.handle(result)

    def _read_probe(self, ref: Any) -> None:
        """A lost batch's actor answered: restarted (batches go to it again), or gone for good."""
        number = self.probes.pop(ref)
        self.actors[number].probe = None
        try:
            self.ray.get(ref)
        except self.ray.exceptions.ActorDiedError:
            log.warning("model actor %d is gone (Ray stopped restarting it)", number)
            self.actors[number].dead = True
        except Exception:
            log.debug("model actor %d did not answer", number, exc_info=True)

    # --- lost work -----------------------------------------------------------------------------------------

    def _lost(self, item: WorkItem, error: BaseException, stage: str) -> None:
        """A worker holding part of `item` was lost: start the video again, or fail it after its last attempt."""
        if not self.collector.current(item):
            return
        self._progress()  # the video starts again (or fails): something happened, bounded by its attempts
        for generator, decode in list(self.decoding.items()):
            if decode.item == item:
                del self.decoding[generator]
                self._cancel(generator)
        self._drop_formed(item)
        reason = one_line(unwrap(error))
        where = "decoding" if stage == "decode" else "embedding"
        counted = not lost_with_a_node(self.ray, error)
        tries = self.tries.get(item.video_id, 0) + counted
        if tries >= self.config.attempts or item.attempt + 1 >= self.config.attempts + NODE_LOSS_RESTARTS:
            lost = WorkerLostError(
                f"{item.path}: the Ray worker {where} it was lost on all {self.config.attempts} tries (last: {reason})"
                if counted
                else f"{item.path}: the Ray worker {where} it was lost {item.attempt + 1} times (last: {reason})"
            )
            self.collector.give_up(item, lost, stage)
            return
        self.tries[item.video_id] = tries
        retry = dataclasses.replace(item, attempt=item.attempt + 1)
        log.warning(
            "%s: a Ray worker %s it was lost (%s); starting it again (%s)",
            item.video_id,
            where,
            reason,
            f"try {tries + 1} of {self.config.attempts}" if counted else "lost with a node: not counted as a try",
        )
        self.collector.restart(retry)
        self.todo.appendleft(retry)

    def _drop_formed(self, item: WorkItem) -> None:
        kept: deque[UnitBatch[WorkItem]] = deque()
        for batch in self.formed:
            pieces = [piece for piece in batch.pieces if piece.key != item]
            if pieces:
                kept.append(UnitBatch(batch.feature, pieces))
        self.formed = kept
