"""Probe benchmark: `extract.media.probe.probe` on a long file against ffmpeg's own stream-copy pass over it.

The probe lists every video and audio packet (`-c copy -f framecrc`) to count frames and find where the streams
really end. Prints its wall time as a ratio of `ffmpeg -i FILE -c copy -f null -` (the same demuxing, nothing
listed), the memory the probe adds to the process (peak RSS after minus before, in a fresh subprocess), and what
the returned StreamMetadata keeps (its frame starts).

    python benchmarks/bench_probe.py [--workdir bench-out] [--minutes 30]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from extract.media.ffmpeg import ffmpeg_path


def make_long_video(path: Path, minutes: float) -> Path:
    """A 30-fps H.264 video with a stereo AAC soundtrack: 1,800 video and ~2,600 audio packets per minute."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        seconds = int(minutes * 60)
        subprocess.run(
            [
                ffmpeg_path(),
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size=320x240:rate=30:duration={seconds}",
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency=440:sample_rate=44100:duration={seconds}",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "60",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-ac",
                "2",
                str(path),
            ],
            check=True,
        )
    return path


def child(path: str) -> None:
    """Probe once in this fresh process; report wall time, the RSS it added and what the result keeps."""
    from extract.media.probe import probe

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    meta = probe(path)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    starts = meta.frame_starts
    kept = starts.nbytes if isinstance(starts, np.ndarray) else sys.getsizeof(starts) + 24 * len(starts)
    print(json.dumps({"wall": wall, "added_mb": after - before, "frames": meta.frame_count, "kept_kb": kept / 1024}))


def baseline(path: Path, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [
                ffmpeg_path(),
                "-v",
                "error",
                "-i",
                str(path),
                "-map",
                "0:V:0?",
                "-map",
                "0:a:0?",
                "-c",
                "copy",
                "-f",
                "null",
                "-",
            ],
            check=True,
        )
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = make_long_video(args.workdir / f"probe-{args.minutes:g}min.mp4", args.minutes)
    copy = baseline(path, args.repeats)
    runs = []
    for _ in range(args.repeats):
        command = [sys.executable, __file__, "_child", str(path)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["wall"])
    print(f"file: {path} ({path.stat().st_size / 1e6:.0f} MB, {best['frames']} frames)")
    print(f"ffmpeg -c copy -f null: {copy:.2f} s")
    print(
        f"probe: {best['wall']:.2f} s ({best['wall'] / copy:.2f}x the stream copy); "
        f"peak RSS added {max(r['added_mb'] for r in runs):.1f} MB; frame starts kept {best['kept_kb']:.0f} KB"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2])
    else:
        main()
