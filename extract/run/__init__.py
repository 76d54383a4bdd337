"""The extraction run, in pieces that a scheduler can reuse.

extraction.py   one invocation: the store's lock, then the models, provenance, the plan, an engine, the summary
config.py       RunConfig: batch sizes, parallelism, resume, commits, engine, shard
plan.py         which (video, feature) tracks are missing: a list of work items
shard.py        --shard i/N by a stable hash of the video id
stages.py       probe, frame source, audio source, embed, commit: one call each, results or failure records
batcher.py      batches of model units filled across videos
assembly.py     one video's tracks and failures, put together as they arrive
collector.py    every engine's bookkeeping: assemblies, the batcher, records to the writer once per video
engine_local.py threads on one machine: decode workers, the model on the main thread, a writer thread
engine_devices.py  one local-engine worker process per device (--devices)
engine_ray.py   the Ray engine's driver; ray_workers.py what it runs in the cluster (decode tasks, model actors)
"""

from extract.run.config import RunConfig
from extract.run.extraction import ExtractionRun, RunStopped
from extract.run.summary import RunSummary

__all__ = ["ExtractionRun", "RunConfig", "RunStopped", "RunSummary"]
