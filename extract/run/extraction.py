"""One img-extract invocation: take the store's lock, load the models, plan the missing tracks, run an engine.

A resumed run plans first with the recipes the engine knows without loading its models (the presets and the
weights' checksums, cached per file): when nothing is left to extract the run ends there, the store checked against
those recipes as against the models' provenance, and no model is loaded (a finished command run again). Otherwise
the models are loaded and that plan kept (planned again only if their recipes differ, which would be a bug).

An engine (extract/run/engine_local.py: threads in this process; engine_devices.py: one such process per
device; engine_ray.py: a Ray cluster) loads its models in `prepare` (returning their provenance) and executes
a plan in `extract`, reporting into a RunSummary and committing through the store's writer, which it closes
(the index is built once, at the end). Everything else about a run (the lock before the models, provenance,
the plan, the run log, what was committed when it stopped) is decided here, the same for any engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from extract.core.console import attach_log_file
from extract.core.errors import UsageError
from extract.media.sources import VideoSource
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.models.presets import Preset
from extract.run.config import RunConfig
from extract.run.plan import Plan, WorkItem, plan_run
from extract.run.shard import record_run_shard
from extract.run.summary import RunSummary
from extract.store import FeatureStore, StoreWriter, list_parts, recipe_id

log = logging.getLogger(f"img_vmr.{__name__}")

Build = Callable[[Preset, ExtractorOptions], FeatureExtractor]


class Engine(Protocol):
    """Runs the work items of a plan: models loaded once by `prepare`, `extract` called once per run."""

    def prepare(self) -> dict[str, dict[str, Any]]:
        """Load the models (once; later calls return the same); their provenance records by feature name."""
        ...

    def recipes_without_models(self) -> dict[str, dict[str, Any]] | None:
        """The recipes `prepare` will record, by feature name, found without loading a model; None where the
        engine cannot tell before its models are loaded."""
        ...

    def extract(self, items: list[WorkItem], writer: StoreWriter, summary: RunSummary) -> None:
        """Extract the items, commit through `writer` and close it (also when interrupted); fill the summary."""
        ...

    def close(self) -> None:
        """Release the models (and processes or cluster connections)."""
        ...


def build_engine(presets: Sequence[Preset], options: ExtractorOptions, config: RunConfig, build: Build) -> Engine:
    """The engine RunConfig asks for (engine, devices)."""
    if config.engine == "ray":
        if config.devices:
            raise UsageError("--devices is for the local engine; with --engine ray the cluster's GPUs are used")
        from extract.run.engine_ray import RayEngine

        return RayEngine(presets, options, config, build)
    if config.engine != "local":
        raise UsageError(f"--engine {config.engine!r}: use local or ray")
    if len(config.devices) > 1:
        from extract.run.engine_devices import DeviceWorkers

        return DeviceWorkers(presets, options, config, build)
    from extract.run.engine_local import LocalModels

    return LocalModels(presets, options, config, build)


class RunStopped(Exception):
    """The run stopped before its end (interrupted, or the store could not be written). Finished videos were
    committed as far as the store allowed: `summary.committed_videos` says how many."""

    def __init__(self, summary: RunSummary, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.summary = summary
        self.cause = cause


class ExtractionRun:
    """One img-extract invocation: the missing tracks of `sources` into the store at `store_path`.

    Models are loaded after the store's writer lock is taken (a store in use is refused at once) and kept for
    later calls; every call to `run()` plans again and builds its threads, queues and batches afresh.
    """

    def __init__(
        self,
        sources: Sequence[VideoSource],
        store_path: Path,
        presets: Sequence[Preset],
        options: ExtractorOptions,
        config: RunConfig,
        build: Build | None = None,
    ) -> None:
        self.sources = list(sources)
        self.store_path = Path(store_path)
        self.presets = list(presets)
        self.options = options
        self.config = config
        self._build = build
        self._engine: Engine | None = None

    def run(self) -> RunSummary:
        summary = RunSummary()
        writer = StoreWriter(self.store_path, {})
        try:
            has_parts = bool(list_parts(writer.parts_dir))
            record_run_shard(self.store_path, writer.parts_dir, self.config.shard, has_parts)
            engine = self.engine()
            recipes = self._recipes_without_models(engine)
            plan = None
            if recipes is not None:  # planned with them first: nothing to extract needs no model
                writer.provenance = {name: {"recipe": recipe} for name, recipe in recipes.items()}
                plan = self._plan(writer, summary)
            if plan is None or plan.items:
                writer.provenance = engine.prepare()
                if plan is None or {name: r["recipe"] for name, r in writer.provenance.items()} != recipes:
                    plan = self._plan(writer, summary)
            else:
                log.debug("nothing to extract: no model loaded")
        except BaseException:
            writer.abandon()
            raise
        start = time.monotonic()  # rates count extraction, not model loading
        log_file = attach_log_file(writer.parts_dir / "extract.log")
        shard = f" (shard {self.config.shard})" if self.config.shard else ""
        log.info(
            "%d video%s%s: %d to extract, %d already in %s, %d failed before",
            summary.total,
            "s" * (summary.total != 1),
            shard,
            len(plan.items),
            summary.skipped,
            self.store_path,
            summary.skipped_failed,
        )
        if plan.retried_other_recipe:
            log.info(
                "%d videos failed before with another recipe (e.g. another --fps) and are tried again with this one",
                plan.retried_other_recipe,
            )
        try:
            if plan.items:
                engine.extract(plan.items, writer, summary)
            else:
                writer.close()  # what an engine does with no work: commit nothing, rebuild the index, unlock
        except BaseException as error:
            summary.stopped = True
            raise RunStopped(summary, error) from error
        finally:
            summary.wall_seconds = time.monotonic() - start
            summary.committed_videos += writer.committed_videos
            summary.committed_failures += writer.committed_failures
            for line in summary.lines():
                log.info("%s", line)
            logging.getLogger("img_vmr").removeHandler(log_file)
            log_file.close()
        return summary

    def engine(self) -> Engine:
        """The engine of this run, built once (its models stay loaded for later runs until close())."""
        if self._engine is None:
            from extract.models import build_extractor

            self._engine = build_engine(self.presets, self.options, self.config, self._build or build_extractor)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def _recipes_without_models(self, engine: Engine) -> dict[str, dict[str, Any]] | None:
        """The engine's recipes found without its models, where the store may already hold every track (it exists
        and the run resumes); None otherwise, or where the engine cannot tell before loading its models."""
        if not self.config.resume or not FeatureStore.exists(self.store_path):
            return None
        return engine.recipes_without_models()

    def _plan(self, writer: StoreWriter, summary: RunSummary) -> Plan:
        existing = FeatureStore(self.store_path) if FeatureStore.exists(self.store_path) else None
        try:
            writer.check_provenance(existing)
            for part, reason in existing.corrupt_parts if existing is not None else []:
                log.warning("damaged part %s ignored (%s); its videos will be extracted again", part.name, reason)
            modalities = {preset.name: preset.modality for preset in self.presets}
            plan = plan_run(
                self.sources,
                existing,
                modalities,
                resume=self.config.resume,
                retry_failed=self.config.retry_failed,
                limit=self.config.limit,
                shard=self.config.shard,
                recipes={name: recipe_id(record["recipe"]) for name, record in writer.provenance.items()},
            )
        finally:
            if existing is not None:
                existing.close()
        summary.total = plan.considered
        summary.skipped, summary.skipped_failed, summary.truncated_kept = (
            plan.complete,
            plan.skipped_failed,
            plan.truncated_kept,
        )
        return plan
