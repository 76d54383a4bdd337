"""The Ray engine (`--engine ray`): decode as CPU tasks, models as an actor pool, parts written by the driver.

    driver (img-extract)                          the cluster
      plan, store lock                            decode_video(item)   one generator task per video, 1 CPU
      Collector: VideoAssembly, Batcher    <--    (payload, event) pairs; payloads stay in the object store
      batches of RemoteRows               -->     ModelWorker.embed     one actor per GPU (num_gpus=1,
      Commit on a writer thread           <--       rows + failures      num_cpus=0), models loaded once
      -> immutable parts, index at the end

Ray core rather than Ray Data: benchmarks/bench_engines.py measured both on the same work (README, "Engines").
The stages, the Batcher, VideoAssembly (via Collector) and the Commit stage are the local engine's own.

Exactly once. A video's records reach the writer once, when all its tracks are settled (Collector). When Ray loses
a worker (a decode task's process or node, a model actor, an object with its node), every video whose events
or batch were lost starts again as a new attempt (`WorkItem.attempt`): what was collected for it is dropped, and
events of older attempts are ignored, so no row is counted twice. After `RunConfig.attempts` tries the video
becomes a failure record. A running decode task silent for `RunConfig.stall_seconds` is lost the same way: the
driver never blocks on one task or actor, it waits on all of them at once. The driver commits parts itself
(features are far smaller than the frames), so the store only needs to be on the driver's disk, and a driver
killed at any moment leaves committed parts only: the same command resumes from them.

Over 450 lines, with `_DriverLoop` one class over 200, on purpose: the driver's methods read and update one
bookkeeping of the decode tasks and batches in flight, their attempts and the collector.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
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
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:  # "local": a new cluster of our own, never one a `ray start` left running on this machine
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    finally:
        if threading.current_thread() is threading.main_thread():
            # ray.init makes SIGTERM a bare sys.exit; ours commits the finished videos first (exit 143)
            signal.signal(signal.SIGTERM, sigterm)
    return not address


def unwrap(error: BaseException) -> BaseException:
    """Our own error inside a Ray task error (it names the failed task and its traceback), else the error."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, ImgVmrError) else error


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
        self.decode_slots = 1
        self.actors_ready_s = ACTORS_READY_S

    def prepare(self) -> dict[str, dict[str, Any]]:
        if self.description is not None:
            return self.description.provenance
        self.started = connect(self.config.ray_address)
        ray = import_ray()
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        spec = self.config.ray_device
        if spec == "cuda" and gpus == 0:
            raise UsageError("--device cuda: the Ray cluster has no GPU; use --device auto or cpu")
        on_gpus = gpus > 0 and spec != "cpu"
        count = gpus if on_gpus else 1
        # a GPU actor that reserved a CPU would starve the decode tasks
        asks = {"num_gpus": 1, "num_cpus": 0} if on_gpus else {"num_gpus": 0, "num_cpus": 1}
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
        self.decode_slots = max(1, cpus - (0 if on_gpus else count))
        log.info(
            "Ray: %d model actor%s on %s, %d decode tasks at a time (%d CPUs, %d GPUs in the cluster)",
            count,
            "s" * (count != 1),
            ", ".join(sorted({d.device for d in descriptions})),
            self.decode_slots,
            cpus,
            gpus,
        )
        return first.provenance

    def _describe(self, asks: dict[str, int]) -> list[Description]:
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
            if pending and waited >= self.actors_ready_s:
                raise WorkerLostError(
                    f"{len(pending)} of {len(self.actors)} model actors did not start within {waited:.0f} s; each "
                    f"asks the Ray cluster for {asks['num_gpus']} GPU and {asks['num_cpus']} CPU "
                    "(`ray status` shows what is free)"
                )
            if pending:
                log.info("Ray: waiting for %d model actors (%.0f s so far)", len(pending), waited)
        return [found[number] for number in range(len(self.actors))]

    def extract(self, items: list[WorkItem], writer: StoreWriter, summary: RunSummary) -> None:
        assert self.description is not None, "prepare() starts the actors first"
        _DriverLoop(self, items, writer, summary).run()

    def close(self) -> None:
        if not self.actors and not self.started:
            return
        ray = import_ray()
        for worker in self.actors:
            try:
                ray.kill(worker)
            except Exception:
                log.debug("killing a model actor failed", exc_info=True)
        self.actors, self.description = [], None
        if self.started:
            ray.shutdown()
            self.started = False


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


class _DriverLoop:
    """One run on the cluster: decode tasks in, batches out, records to the writer."""

    def __init__(self, engine: RayEngine, items: list[WorkItem], writer: StoreWriter, summary: RunSummary) -> None:
        self.ray = import_ray()
        assert engine.description is not None
        self.engine, self.config = engine, engine.config
        description = engine.description
        sizes = batch_sizes(description.max_batch, self.config)
        self.limits = _Limits(engine.decode_slots, PENDING_BATCHES_PER_ACTOR * len(engine.actors) * max(sizes.values()))
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
        self.decode = self.ray.remote(decode_video).options(
            num_cpus=1, max_retries=0, _generator_backpressure_num_objects=DECODE_BACKPRESSURE
        )
        self.views = self.ray.put(description.views)

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
            self._submit_decodes()
            decoding_done = not self.todo and not self.decoding
            self._form(flush=decoding_done)
            self._dispatch()
            reading = self.batcher.pending() + sum(map(len, self.formed)) < self.limits.pending_units
            self._check_stalls(reading)
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
            for waitable in ready:
                if waitable in self.decoding:
                    self._read_decode(waitable)
                elif waitable in self.probes:
                    self._read_probe(waitable)
                else:
                    self._read_batch(waitable)
            self.writer.raise_if_failed()
        self.collector.close()

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
        try:
            self.ray.cancel(generator)
        except Exception:
            log.debug("cancelling a decode task failed", exc_info=True)

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
        for generator, decode in list(self.decoding.items()):
            if decode.item == item:
                del self.decoding[generator]
                self._cancel(generator)
        self._drop_formed(item)
        reason = one_line(unwrap(error))
        if item.attempt + 1 >= self.config.attempts:
            where = "decoding" if stage == "decode" else "embedding"
            lost = WorkerLostError(
                f"{item.path}: the Ray worker {where} it was lost on all {self.config.attempts} tries (last: {reason})"
            )
            self.collector.give_up(item, lost, stage)
            return
        retry = dataclasses.replace(item, attempt=item.attempt + 1)
        log.warning(
            "%s: a Ray worker %s it was lost (%s); starting it again (try %d of %d)",
            item.video_id,
            "decoding" if stage == "decode" else "embedding",
            reason,
            retry.attempt + 1,
            self.config.attempts,
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
