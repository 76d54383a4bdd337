"""The extraction run, in pieces that a scheduler can reuse.

extraction.py   one invocation: the store's lock, then the models, provenance, the plan, an engine, the summary
config.py       RunConfig: batch sizes, parallelism, resume, commits
plan.py         which (video, feature) tracks are missing: a list of work items (what sharding slices)
stages.py       probe, frame source, audio source, embed, commit: one call each, results or failure records
batcher.py      batches of model units filled across videos
assembly.py     one video's tracks and failures, put together as they arrive
engine_local.py threads on one machine: decode workers, the model on the main thread, a writer thread
"""

from extract.run.config import RunConfig
from extract.run.extraction import ExtractionRun, RunStopped
from extract.run.summary import RunSummary

__all__ = ["ExtractionRun", "RunConfig", "RunStopped", "RunSummary"]
