"""IMG data loading from HDF5 stores: throughput against the training step, and memory at ActivityNet scale.

Two measurements on synthetic stores written through the real writers (img_model.data.synthetic, parts of 32 videos
as img-extract commits them, one query per video):

- `rate`: queries per second a training DataLoader (2 worker processes, batches of 16, saliency draws,
  collation) delivers from a store of 1,000 videos with Charades-sized tracks (I3D 1024-d at 1 row/s, PANNs
  2048-d at 2 rows/s, 16-64 s); and, in CPU time (which a machine shared with other work does not distort),
  what loading costs per query against what one training step of the Charades IMG costs per query on one
  thread (both measured in the same process).
- `memory`: one pass over the training split of a 20,000-video store (ActivityNet's size), lazily read from
  HDF5 and with --cache-features, each in a fresh process: peak RSS of the main process and of the largest
  worker, the time to open the stores and the time until the first batch (which includes each worker's
  opening of the stores).

    python benchmarks/bench_data.py rate [--videos 1000] [--workers 2]
    python benchmarks/bench_data.py memory [--videos 20000] [--workers 2]

The stores are written once into --folder (default /tmp/img-vmr-bench-data) and reused.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from bench_img import make_batch, training_step  # beside this script
from torch.utils.data import DataLoader

from img_model.data.batch import collate
from img_model.data.config import DataConfig
from img_model.data.dataset import DataSources
from img_model.data.synthetic import SyntheticDataset, SyntheticSpec, write_audio_matters
from img_model.train.batches import EpochBatches

CHARADES_SIZED = SyntheticSpec(
    min_steps=16,
    max_steps=64,
    visual_dim=1024,
    audio_dim=2048,
    audio_rows_per_second=2,
    silent_videos=0,
    commit_every=32,
)
# 20,000 videos at Charades sizes would be 50 GB; the memory pass keeps the count and shrinks the rows.
ACTIVITYNET_COUNT = SyntheticSpec(
    min_steps=16, max_steps=64, visual_dim=64, audio_dim=32, audio_rows_per_second=2, silent_videos=0, commit_every=32
)


def store(folder: Path, spec: SyntheticSpec, videos: int) -> SyntheticDataset:
    """A synthetic dataset of about `videos` videos (90% train), written once and reused."""
    per_family = max(1, round(videos * 0.9 / 3)), max(1, round(videos * 0.1 / 3))
    spec = replace(spec, train_videos_per_family=per_family[0], test_videos_per_family=per_family[1])
    target = folder / f"{videos}-{spec.visual_dim}x{spec.audio_dim}"
    if not (target / "queries.jsonl").is_file():
        started = time.perf_counter()
        write_audio_matters(target, spec)
        print(f"wrote {target} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return SyntheticDataset(target, target / "feats.h5", target / "text.h5", target / "queries.jsonl")


def data_config(data: SyntheticDataset, cache: bool) -> DataConfig:
    return DataConfig(
        str(data.annotations),
        (str(data.features),),
        data.visual,
        data.audio,
        str(data.text),
        missing_audio="zeros",
        cache_features=cache,
    )


def loader(sources: DataSources, workers: int, batch_size: int = 16) -> tuple[DataLoader, int]:
    dataset = sources.dataset(sources.splits()["train"], "train", "train", 128)
    batches = EpochBatches(len(dataset), batch_size, seed=0)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers), len(dataset)


def one_pass(data: SyntheticDataset, workers: int, cache: bool) -> dict[str, float]:
    """Open the sources, then iterate one epoch: timings and peak RSS (this process, and its largest worker)."""
    started = time.perf_counter()
    sources = DataSources(data_config(data, cache))
    data_loader, queries = loader(sources, workers)
    opened = time.perf_counter()
    first = None
    for number, _ in enumerate(data_loader):
        if number == 0:
            first = time.perf_counter()
    finished = time.perf_counter()
    assert first is not None
    return {
        "queries": queries,
        "open_s": opened - started,
        "first_batch_s": first - opened,
        "pass_s": finished - opened,
        "queries_per_s": queries / (finished - first),
        "main_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def loading_cost(data: SyntheticDataset, batches: int = 12, batch_size: int = 16) -> float:
    """CPU seconds per query of reading, aligning, sampling and collating in this process (no workers): what
    each worker spends, independent of how busy the machine is."""
    sources = DataSources(data_config(data, cache=False))
    dataset = sources.dataset(sources.splits()["train"], "train", "train", 128)
    collate([dataset[(0, i)] for i in range(batch_size)])  # warm: open files
    started = time.process_time()
    for number in range(batches):
        collate([dataset[(0, (number * batch_size + i) % len(dataset))] for i in range(batch_size)])
    return (time.process_time() - started) / (batches * batch_size)


def training_cost(batch: int = 16) -> float:
    """CPU seconds per query of one Charades IMG training step (forward, loss, backward) on one thread (median of
    3 steps after one warm-up): the cost a query has in training, independent of how busy the machine is."""
    from img_model.network.config import IMGConfig
    from img_model.network.model import IMG

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = IMGConfig()
    model = IMG(config).train()
    inputs, labels = make_batch(config, batch, 128, 12, torch.device("cpu"))
    training_step(model, inputs, labels, None)
    times = []
    for _ in range(3):
        started = time.process_time()
        training_step(model, inputs, labels, None)
        times.append(time.process_time() - started)
    torch.set_num_threads(threads)
    return statistics.median(times) / batch


def rate(args: argparse.Namespace) -> None:
    data = store(args.folder, CHARADES_SIZED, args.videos)
    result = one_pass(data, args.workers, cache=False)
    loading, training = loading_cost(data), training_cost()
    print(
        f"data loading, {result['queries']} training queries of {args.videos} videos (I3D 1024-d + PANNs 2048-d, "
        f"16-64 s), batch 16"
    )
    print(
        f"  DataLoader with {args.workers} workers: {result['queries_per_s']:.0f} queries/s on this machine now "
        f"(first batch after {result['first_batch_s']:.1f} s)"
    )
    print(
        f"  CPU per query: loading {loading * 1e3:.2f} ms (read, align, sample, collate), one IMG training step "
        f"{training * 1e3:.0f} ms (CPU, 1 thread): loading is {training / loading:.0f}x cheaper, so each worker "
        f"feeds {training / loading:.0f} CPU training threads"
    )


def memory(args: argparse.Namespace) -> None:
    data = store(args.folder, ACTIVITYNET_COUNT, args.videos)
    print(f"one pass over the training split of {args.videos} videos ({data.features}), {args.workers} workers")
    for cache in (False, True):
        command = [sys.executable, __file__, "pass", str(data.folder), "--workers", str(args.workers)]
        result = json.loads(
            subprocess.run(
                [*command, *(["--cache"] if cache else [])], capture_output=True, text=True, check=True
            ).stdout
        )
        label = "--cache-features" if cache else "lazy (HDF5)"
        print(
            f"  {label:<17} peak RSS main {result['main_peak_mib']:7.0f} MiB, largest worker "
            f"{result['worker_peak_mib']:7.0f} MiB; open {result['open_s']:5.1f} s, first batch after "
            f"{result['first_batch_s']:5.1f} s, pass {result['pass_s']:6.1f} s ({result['queries_per_s']:.0f} "
            "queries/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["rate", "memory", "pass"])
    parser.add_argument("folder_arg", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--videos", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/img-vmr-bench-data"))
    args = parser.parse_args()
    if args.what == "pass":  # one measured pass, in its own process (called by `memory`)
        folder = args.folder_arg
        data = SyntheticDataset(folder, folder / "feats.h5", folder / "text.h5", folder / "queries.jsonl")
        print(json.dumps(one_pass(data, args.workers, args.cache)))
        return
    args.videos = args.videos or (1000 if args.what == "rate" else 20000)
    if args.what == "rate":
        rate(args)
    else:
        memory(args)


if __name__ == "__main__":
    main()
