"""Engines benchmark: the local engine, the Ray engine (Ray core) and a Ray Data pipeline of the same stages, and
two `--shard i/N` jobs run in parallel then merged, on synthetic short videos and a tiny random CLIP.

    python benchmarks/bench_engines.py                          # 200 videos of 2 s
    python benchmarks/bench_engines.py --videos 50 --skip ray-data

For each engine: the wall time of the whole run (a real `img-extract` process, or this script's Ray Data
variant in its own process), the CPU-seconds of every process it started (this script reaps them all: it is
their subreaper, so Ray's servers and workers are counted too), the most processes alive at once, and the fixed
start-up cost (the same command on a one-video manifest: interpreter, imports, cluster, model load). The
per-video cost is (whole - start-up) / (videos - 1). Ratios are against the local engine in the same process.

The Ray Data variant is the same work as the Ray engine expressed as a Dataset: `map_batches` decode tasks (the
stages of extract/run/stages.py, one video per task, its events to a small actor) -> `map_batches` with an actor
pool of the model (Embed) -> the driver assembles the rows (VideoAssembly) and commits parts. It needs
`pip install "ray[data]"`; it exists to measure the choice the Ray engine made (docs/engines.md).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: benchmarks.fixtures is found from the checkout
    sys.path.insert(0, str(ROOT))
PR_SET_CHILD_SUBREAPER = 36


# --- inputs ---------------------------------------------------------------------------------------------------


def one_video_manifest(videos: Path, out: Path) -> Path:
    first = sorted(videos.glob("*.mp4"))[0]
    out.write_text(json.dumps({"video_id": first.stem, "path": str(first)}) + "\n")
    return out


# --- measuring processes --------------------------------------------------------------------------------------


def become_subreaper() -> None:
    """Orphaned descendants (Ray's servers and workers outlive their parents briefly) are re-parented to this
    process, so their CPU time reaches RUSAGE_CHILDREN when we reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class ProcessTree:
    """The processes below this one, sampled: how many at most, and each one's CPU time when last seen."""

    def __init__(self) -> None:
        self.peak = 0
        self.cpu: dict[int, float] = {}
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        table: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self.tick)
        mine, changed = {os.getpid()}, True
        while changed:
            changed = False
            for pid, (parent, _) in table.items():
                if parent in mine and pid not in mine:
                    mine.add(pid)
                    changed = True
        mine.discard(os.getpid())
        self.peak = max(self.peak, len(mine))
        for pid in mine:
            self.cpu[pid] = table[pid][1]


def reap_all(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.1)


def measure(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds, CPU-seconds of everything it started, and the most processes alive at once.

    CPU-seconds are the larger of what the kernel accounted to the descendants reaped through the tree (exact for
    the local engine, whose ffmpeg processes are short-lived) and each process's own CPU time sampled every 0.1 s
    (Ray's workers and servers are not all reaped through the tree; a process's last 0.1 s may be missed).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tree = ProcessTree()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            tree.sample()

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.monotonic()
    sampler.start()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    reap_all()
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": max(reaped, sum(tree.cpu.values())), "processes": tree.peak}


# --- the Ray Data variant (run in its own process by --ray-data-run) ------------------------------------------


def _decode_videos(batch: dict[str, np.ndarray], views: dict, sink: object):  # type: ignore[no-untyped-def]
    import ray

    from extract.run.events import Failed, UnitsReady
    from extract.run.plan import WorkItem
    from extract.run.stages import AudioSource, FrameSource, Probe, failure, video_events

    for video_id, path in zip(batch["video_id"], batch["path"], strict=True):
        item = WorkItem(str(video_id), Path(str(path)), tuple(views))
        control, seq = [], 0
        try:
            for event in video_events(item, Probe(), FrameSource(views, threads=1), AudioSource(views)):
                if isinstance(event, UnitsReady):
                    count = len(event.units)
                    yield {
                        "video_id": np.array([item.video_id] * count),
                        "feature": np.array([event.feature] * count),
                        "seq": np.arange(seq, seq + count),
                        "span": event.units.spans,
                        "inputs": event.units.inputs,
                    }
                    seq += count
                else:
                    control.append(event)
        except Exception as error:  # one video's error must not abort the dataset
            control.append(Failed(failure(item, item.features, "decode", error)))
        ray.get(sink.put.remote(item.video_id, pickle.dumps(control)))  # type: ignore[attr-defined]


class _Embed:
    def __init__(self, presets: list, options: object) -> None:
        from extract.models import build_extractor
        from extract.run.stages import Embed

        self.extractors = {preset.name: build_extractor(preset, options) for preset in presets}
        self.embed = Embed(self.extractors)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from extract.models.base import Units
        from extract.run.batcher import Piece, UnitBatch
        from extract.run.events import Embedded

        feature = str(batch["feature"][0])
        pieces = [
            Piece((str(v), int(s)), Units(batch["inputs"][i : i + 1], batch["span"][i : i + 1]))
            for i, (v, s) in enumerate(zip(batch["video_id"], batch["seq"], strict=True))
        ]
        done = [r for r in self.embed(UnitBatch(feature, pieces)) if isinstance(r, Embedded)]  # failures: no rows
        return {
            "video_id": np.array([r.item[0] for r in done], dtype=object),
            "feature": np.array([feature] * len(done), dtype=object),
            "seq": np.array([r.item[1] for r in done], dtype=np.int64),
            "span": np.concatenate([r.units.spans for r in done]) if done else np.zeros((0, 2)),
            "row": np.concatenate([r.rows for r in done]) if done else np.zeros((0, 1), np.float32),
        }


def ray_data_run(videos: Path, out: Path, clip: Path, batch_size: int) -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    import torch

    from extract.media.sources import video_sources
    from extract.models import ExtractorOptions, build_extractor
    from extract.models.base import Units
    from extract.models.presets import get_preset
    from extract.run.assembly import VideoAssembly
    from extract.run.events import Embedded, Failed, Probed, SourceDone
    from extract.run.plan import WorkItem
    from extract.run.provenance import provenance_records
    from extract.run.ray_workers import DecodeView
    from extract.store import StoreWriter, VideoRecord

    ray.init(include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False

    @ray.remote(num_cpus=0)
    class Sink:
        def __init__(self) -> None:
            self.events: dict[str, bytes] = {}

        def put(self, video_id: str, blob: bytes) -> None:
            self.events[video_id] = blob

        def take(self) -> dict[str, bytes]:
            return self.events

    options = ExtractorOptions(torch.device("cpu"))
    presets = [get_preset("clip").with_options(weights=str(clip))]
    extractors = [build_extractor(preset, options) for preset in presets]  # on the driver: views and provenance
    views = {e.name: DecodeView(e) for e in extractors}
    sources = video_sources(videos)
    sink = Sink.remote()
    rows = ray.data.from_items([{"video_id": s.video_id, "path": str(s.path)} for s in sources])
    units = rows.map_batches(_decode_videos, batch_size=1, num_cpus=1, fn_kwargs={"views": views, "sink": sink})
    embedded = units.map_batches(
        _Embed, fn_constructor_args=(presets, options), batch_size=batch_size, concurrency=1, num_cpus=1
    )
    collected: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        for video_id, feature, seq, span, row in zip(
            batch["video_id"], batch["feature"], batch["seq"], batch["span"], batch["row"], strict=True
        ):
            collected[(str(video_id), str(feature))].append((int(seq), span, row))
    events = {video_id: pickle.loads(blob) for video_id, blob in ray.get(sink.take.remote()).items()}
    writer = StoreWriter(out, provenance_records(extractors))
    for source in sources:
        item = WorkItem(source.video_id, source.path, tuple(views))
        assembly = VideoAssembly(item)
        for event in events.get(source.video_id, []):
            if isinstance(event, Probed):
                assembly.probed(event.metadata)
            elif isinstance(event, Failed):
                assembly.fail(event.record)
        for name in item.features:
            got = sorted(collected.get((source.video_id, name), []), key=lambda unit: unit[0])
            if got:
                rows = np.stack([row for _, _, row in got])
                units = Units(np.empty((len(rows), 0)), np.stack([span for _, span, _ in got]))
                assembly.queued(name, len(rows))
                assembly.embedded(Embedded(item, name, units, rows))
        for event in events.get(source.video_id, []):
            if isinstance(event, SourceDone):
                assembly.source_done(event)
        for record in assembly.records():
            if isinstance(record, VideoRecord):
                writer.add_video(record)
            else:
                writer.add_failure(record)
            if writer.pending >= 32:
                writer.commit()
    writer.close()
    ray.shutdown()


# --- the benchmark --------------------------------------------------------------------------------------------


def main() -> None:
    from benchmarks.fixtures import make_videos, random_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "img-vmr-bench-engines")
    parser.add_argument("--skip", default="", help="comma list of: ray, ray-data, shards")
    parser.add_argument("--ray-data-run", nargs=3, metavar=("VIDEOS", "OUT", "CLIP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_data_run:
        videos, out, clip = map(Path, args.ray_data_run)
        ray_data_run(videos, out, clip, args.batch_size)
        return
    become_subreaper()
    skip = set(filter(None, args.skip.split(",")))
    work = args.workdir
    videos = work / f"videos-{args.videos}x{args.seconds:g}s"
    make_videos(videos, args.videos, args.seconds, size="160x120", rate=25, audio=False)
    clip = random_clip(work / "tiny-clip")
    one = one_video_manifest(videos, work / "one.jsonl")
    stores = work / "stores"
    shutil.rmtree(stores, ignore_errors=True)
    stores.mkdir(parents=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cli = [sys.executable, "-m", "extract.cli"]
    common = ["--clip-model", str(clip), "--no-progress", "--batch-size", str(args.batch_size), "--device", "cpu"]

    def engine(name: str, source: Path, out: Path) -> list[str]:
        if name == "ray-data":
            return [
                sys.executable,
                __file__,
                "--batch-size",
                str(args.batch_size),
                "--ray-data-run",
                str(source),
                str(out),
                str(clip),
            ]
        extra = ["--engine", "ray"] if name == "ray" else []
        return [*cli, str(source), "--out", str(out), *common, *extra]

    results: dict[str, dict[str, float]] = {}
    for name in ("local", "ray", "ray-data"):
        if name in skip:
            continue
        startup = measure(engine(name, one, stores / f"{name}-one.h5"), env)
        whole = measure(engine(name, videos, stores / f"{name}.h5"), env)
        results[name] = {
            **whole,
            "startup": startup["wall"],
            "per_video": (whole["wall"] - startup["wall"]) / max(1, args.videos - 1),
        }
        print(f"{name}: {results[name]}", flush=True)
        check_same_videos(stores / "local.h5", stores / f"{name}.h5")
    if "shards" not in skip:
        start = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        shards = [
            subprocess.Popen(
                [
                    *cli,
                    str(videos),
                    "--out",
                    str(stores / f"shard{i}.h5"),
                    *common,
                    "--workers",
                    "1",
                    "--shard",
                    f"{i}/2",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(2)
        ]
        for shard in shards:
            if shard.wait() not in (0, 1):
                raise SystemExit(shard.stderr.read().decode() if shard.stderr else "a shard failed")
        extracted = time.monotonic() - start
        merge = measure(
            [
                *cli,
                "merge",
                str(stores / "shard0.h5"),
                str(stores / "shard1.h5"),
                "--out",
                str(stores / "merged.h5"),
                "--no-progress",
            ],
            env,
        )
        reap_all()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        results["shards 0/2 + 1/2, merged"] = {
            "wall": extracted + merge["wall"],
            "cpu": cpu,
            "processes": 2,
            "startup": float("nan"),
            "per_video": float("nan"),
            "merge": merge["wall"],
        }
        check_same_videos(stores / "local.h5", stores / "merged.h5")
    base = results.get("local")
    print(f"\n{args.videos} videos of {args.seconds:g} s, tiny CLIP, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'engine':<28} {'wall s':>8} {'ratio':>6} {'CPU s':>8} {'start-up s':>10} {'per video s':>11} {'procs':>5}")
    for name, r in results.items():
        ratio = r["wall"] / base["wall"] if base else float("nan")
        print(
            f"{name:<28} {r['wall']:8.1f} {ratio:6.2f} {r['cpu']:8.1f} {r['startup']:10.1f} {r['per_video']:11.3f} "
            f"{int(r['processes']):5d}"
        )
    if "shards 0/2 + 1/2, merged" in results:
        print(f"(merge alone: {results['shards 0/2 + 1/2, merged']['merge']:.1f} s; merged store = local store's ids)")


def check_same_videos(reference: Path, other: Path) -> None:
    from extract.store import FeatureStore

    if not reference.exists():
        return
    with FeatureStore(reference) as a, FeatureStore(other) as b:
        assert a.video_ids() == b.video_ids(), f"{other} holds other videos than {reference}"
        for video_id in a.video_ids():
            np.testing.assert_allclose(
                a.track(video_id, "clip").features, b.track(video_id, "clip").features, atol=1e-5
            )


if __name__ == "__main__":
    main()
