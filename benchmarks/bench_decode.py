"""Decode benchmark: our frame decoders against `ffmpeg -i FILE -f null -` on the same 720p H.264 file.

Prints, for each decoder and rate, wall time as a ratio of the full-decode baseline, and peak memory (RSS of
the Python process plus its ffmpeg child) for a 1-minute vs a 10-minute video (target: ratio <= 1.2, memory flat
in video length). Every measurement runs in a fresh subprocess so that peak RSS is its own.

    python benchmarks/bench_decode.py [--workdir bench-out] [--long-minutes 10]
    python benchmarks/bench_decode.py --size 480x360 --short-seconds 30   # the Charades-like file of issue 19

The ratio column is wall time over `ffmpeg -i FILE -f null -` on the same file (target at 24 fps: <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from extract.media.ffmpeg import ffmpeg_path

# (decoder, fps, interpolation): bicubic resizes inside the decoder (CLIP, i3d); cv2_bilinear hands over frames
# at their own size and resizes them in torch as cv2 does (the VSLNet presets).
CONFIGS = [
    ("ffmpeg", 1.0, "bicubic"),
    ("decord", 1.0, "bicubic"),
    ("ffmpeg", 24.0, "bicubic"),
    ("decord", 24.0, "bicubic"),
    ("ffmpeg", 24.0, "cv2_bilinear"),
]


def make_video(path: Path, minutes: float, size: str = "1280x720") -> Path:
    if not path.exists():
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
                f"testsrc2=size={size}:rate=30:duration={seconds}",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "60",
                "-pix_fmt",
                "yuv420p",
                str(path),
            ],
            check=True,
        )
    return path


def child(decoder: str, fps: float, interpolation: str, path: str) -> None:
    """Decode one file, then report wall time and peak RSS of this process and of its ffmpeg children."""
    from extract.media.decode import FrameSampling, iter_frames
    from extract.media.probe import probe

    meta = probe(path)
    start = time.perf_counter()
    frames = 0
    sampling = FrameSampling(fps=fps, short_side=224, crop=224, decoder=decoder, interpolation=interpolation)
    for batch in iter_frames(meta, sampling):
        frames += len(batch)
    wall = time.perf_counter() - start
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "frames": frames, "self_mb": self_mb, "ffmpeg_mb": child_mb}))


def measure(decoder: str, fps: float, interpolation: str, path: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "_child", decoder, str(fps), interpolation, str(path)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def baseline(path: Path, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([ffmpeg_path(), "-v", "error", "-i", str(path), "-f", "null", "-"], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--short-seconds", type=float, default=60.0)
    parser.add_argument("--size", default="1280x720")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    short = make_video(args.workdir / f"{args.size}-{args.short_seconds:g}s.mp4", args.short_seconds / 60, args.size)
    long = make_video(args.workdir / f"{args.size}-{args.long_minutes:g}min.mp4", args.long_minutes, args.size)
    base = baseline(short)
    print(f"baseline: ffmpeg -i {short.name} -f null -  {base:.2f} s")
    header = f"{'decoder':<8} {'fps':>5} {'resize':<13} {'x ffmpeg -f null':>16} {'frames':>7} {'RSS short':>10}"
    print(f"{header} {'RSS long':>9} {'ratio':>6}")
    for decoder, fps, interpolation in CONFIGS:
        one = min((measure(decoder, fps, interpolation, short) for _ in range(2)), key=lambda r: r["wall"])
        ten = measure(decoder, fps, interpolation, long)
        rss_one = one["self_mb"] + one["ffmpeg_mb"]
        rss_ten = ten["self_mb"] + ten["ffmpeg_mb"]
        print(
            f"{decoder:<8} {fps:>5g} {interpolation:<13} {one['wall'] / base:>16.2f} {one['frames']:>7d} "
            f"{rss_one:>8.0f}MB {rss_ten:>7.0f}MB {rss_ten / rss_one:>6.2f}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        main()
