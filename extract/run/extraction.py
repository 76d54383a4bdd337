"""One img-extract invocation: take the store's lock, load the models, plan the missing tracks, run an engine.

The engine (today the local one, extract/run/engine_local.py) gets a plan and loaded models and reports into a
RunSummary; everything else about a run (the lock before the models, provenance, the plan, the run log, what
was committed when it stopped) is decided here, the same for any engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from extract.log_file import attach_log_file
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.presets import Preset
from extract.run.config import RunConfig
from extract.run.engine_local import LocalEngine
from extract.run.plan import Plan, plan_run
from extract.run.provenance import provenance_records
from extract.run.summary import RunSummary
from extract.sources import VideoSource
from extract.store import FeatureStore, StoreWriter, recipe_id

log = logging.getLogger("img_vmr.extract")

Build = Callable[[Preset, ExtractorOptions], FeatureExtractor]


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
        self._extractors: list[FeatureExtractor] | None = None

    def run(self) -> RunSummary:
        summary = RunSummary(total=len(self.sources))
        writer = StoreWriter(self.store_path, {})
        try:
            extractors = self._load()
            writer.provenance = provenance_records(extractors)
            plan = self._plan(writer, extractors, summary)
        except BaseException:
            writer.abandon()
            raise
        start = time.monotonic()  # rates count extraction, not model loading
        log_file = attach_log_file(writer.parts_dir / "extract.log")  # every run appends its full log
        log.info(
            "%d videos: %d to extract, %d already in %s, %d failed before",
            len(self.sources),
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
            LocalEngine(plan.items, extractors, writer, self.config, summary).run()
        except BaseException as error:
            summary.stopped = True
            raise RunStopped(summary, error) from error
        finally:
            summary.wall_seconds = time.monotonic() - start
            summary.committed_videos, summary.committed_failures = writer.committed_videos, writer.committed_failures
            for line in summary.lines():
                log.info("%s", line)
            logging.getLogger("img_vmr").removeHandler(log_file)
            log_file.close()
        return summary

    def _load(self) -> list[FeatureExtractor]:
        if self._extractors is None:
            from extract.models import build_extractor

            build = self._build or build_extractor
            self._extractors = [build(preset, self.options) for preset in self.presets]
        return self._extractors

    def _plan(self, writer: StoreWriter, extractors: list[FeatureExtractor], summary: RunSummary) -> Plan:
        existing = FeatureStore(self.store_path) if FeatureStore.exists(self.store_path) else None
        try:
            writer.check_provenance(existing)
            for part, reason in existing.corrupt_parts if existing is not None else []:
                log.warning("damaged part %s ignored (%s); its videos will be extracted again", part.name, reason)
            modalities = {e.name: e.preset.modality for e in extractors}
            plan = plan_run(
                self.sources,
                existing,
                modalities,
                resume=self.config.resume,
                retry_failed=self.config.retry_failed,
                limit=self.config.limit,
                recipes={name: recipe_id(record["recipe"]) for name, record in writer.provenance.items()},
            )
        finally:
            if existing is not None:
                existing.close()
        summary.skipped, summary.skipped_failed, summary.truncated_kept = (
            plan.complete,
            plan.skipped_failed,
            plan.truncated_kept,
        )
        return plan
