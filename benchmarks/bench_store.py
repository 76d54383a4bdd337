"""Store benchmark: reading every track of a store left in many parts, before and after `compact`.

Builds a store of N parts holding one video each (a slow run commits a part per minute), then measures, in the
same process: opening the store (the scan of every part), reading every track with `iter_tracks`, and the
most files the reader held open at once; then compacts the store and measures the same again. Prints the
after/before ratios. The parts are written without fsync to build the store quickly (writing is not measured).

    python benchmarks/bench_store.py [--parts 300] [--rows 60] [--dim 512] [--workdir bench-out]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from unittest import mock

import numpy as np

from extract.store import FeatureStore, StoreWriter, Track, VideoRecord, iter_tracks
from extract.store.compact import compact

PROVENANCE = {"clip": {"recipe": {"preset": "clip", "frames.fps": 1.0}, "software": {}, "runtime": {}}}


def build(store: Path, parts: int, rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    spans = np.stack([np.arange(rows), np.arange(rows) + 1.0], axis=1)
    with mock.patch.object(os, "fsync", lambda fd: None):
        writer = StoreWriter(store, PROVENANCE)
        for i in range(parts):
            track = Track(rng.standard_normal((rows, dim), dtype=np.float32), spans)
            writer.add_video(VideoRecord(f"v{i:05d}", {"duration": float(rows), "has_audio": True}, {"clip": track}))
            writer.commit()
        writer.close()


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def read_all(store: Path, repeats: int = 5) -> dict[str, float]:
    """Best of `repeats`: seconds to open (scan) and to read every track, and the peak of open files."""
    best = {"open_s": float("inf"), "read_s": float("inf"), "peak_open_files": 0.0, "rows": 0.0}
    baseline = open_files()
    for _ in range(repeats):
        start = time.perf_counter()
        with FeatureStore(store) as reader:
            opened = time.perf_counter()
            rows = 0
            peak = 0
            for _, track in iter_tracks(reader, "clip"):
                rows += len(track.features)
                peak = max(peak, open_files() - baseline)
            done = time.perf_counter()
        best["open_s"] = min(best["open_s"], opened - start)
        best["read_s"] = min(best["read_s"], done - opened)
        best["peak_open_files"] = max(best["peak_open_files"], peak)
        best["rows"] = rows
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=300)
    parser.add_argument("--rows", type=int, default=60, help="rows per track (60 = a 1-minute video at 1 fps)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    store = args.workdir / "store" / "feats.h5"
    shutil.rmtree(store.parent, ignore_errors=True)
    store.parent.mkdir(parents=True)
    build(store, args.parts, args.rows, args.dim)
    before = read_all(store)
    start = time.perf_counter()
    report = compact(store)
    compact_s = time.perf_counter() - start
    after = read_all(store)
    assert before["rows"] == after["rows"] == args.parts * args.rows
    mb = report.bytes_before / 1e6
    print(f"{args.parts} parts, {args.parts} videos x [{args.rows}, {args.dim}] float32, {mb:.1f} MB")
    print(f"compact: {len(report.merged)} parts -> {len(report.written)} in {compact_s:.2f} s")
    for key in ("open_s", "read_s"):
        ratio = before[key] / after[key]
        print(f"{key:<8} before {before[key]:.3f} s   after {after[key]:.3f} s   before/after {ratio:.1f}x")
    total_before, total_after = before["open_s"] + before["read_s"], after["open_s"] + after["read_s"]
    print(f"open+read before/after {total_before / total_after:.1f}x")
    peaks = before["peak_open_files"], after["peak_open_files"]
    print(f"most files open while reading: before {peaks[0]:.0f}, after {peaks[1]:.0f}")


if __name__ == "__main__":
    main()
