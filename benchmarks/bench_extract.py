"""Extraction benchmark: CLIP over 40 short videos, cross-video batching vs one video at a time.

The baseline is what a typical per-video script does: probe, decode the video, embed its frames in one
forward pass, write, next video. Ours is `ExtractionRun` (parallel decode threads, batches filled across
videos, a writer thread). Both use the same decoder, model and store, in this process; the ratio is printed.

    python benchmarks/bench_extract.py [--videos 40] [--seconds 8] [--model-dir DIR] [--batch-size 64]

Without --model-dir a tiny random CLIP vision tower is built (no download).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from extract.decode import iter_frames
from extract.ffmpeg_binary import ffmpeg_path
from extract.models import ExtractorOptions, build_extractor
from extract.presets import CLIP
from extract.probe import probe
from extract.runner import ExtractionRun, RunConfig, provenance_records
from extract.sources import scan_folder
from extract.store import StoreWriter, Track, VideoRecord


def make_videos(folder: Path, count: int, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"video{i:03d}.mp4"
        if not path.exists():
            subprocess.run(
                [ffmpeg_path(), "-v", "error", "-y", "-f", "lavfi",
                 "-i", f"testsrc2=size=480x360:rate=30:duration={seconds}",
                 "-f", "lavfi", "-i", f"sine=frequency={200 + 10 * i}:duration={seconds}",
                 "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
                check=True,
            )  # fmt: skip


def tiny_clip(folder: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=224, patch_size=32, projection_dim=32,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return folder


def one_at_a_time(extractor, videos: Path, out: Path) -> tuple[float, int]:
    start = time.perf_counter()
    writer = StoreWriter(out, provenance_records([extractor]))
    frames = 0
    for source in scan_folder(videos):
        meta = probe(source.path)
        batches = list(iter_frames(meta, extractor.frame_sampling))
        data = np.concatenate([b.data for b in batches])
        pts = np.concatenate([b.pts_seconds for b in batches])
        rows = extractor.embed(data)
        frames += len(data)
        spans = np.stack([pts, pts + 1.0 / extractor.frame_sampling.fps], axis=1)
        writer.add_video(VideoRecord(source.video_id, meta.as_attrs(), {extractor.name: Track(rows, spans)}))
    writer.close()
    return time.perf_counter() - start, frames


def batched(extractor, videos: Path, out: Path, batch_size: int, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    config = RunConfig(batch_size=batch_size, workers=workers, progress=False)
    summary = ExtractionRun(scan_folder(videos), out, [extractor], config).run()
    return time.perf_counter() - start, summary.units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    videos = args.workdir / f"clips-{args.videos}x{args.seconds:g}s"
    make_videos(videos, args.videos, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_dir or tiny_clip(Path(tmp) / "tiny-clip")
        preset = CLIP.with_overrides(weights=str(model), fps=args.fps)
        extractor = build_extractor(preset, ExtractorOptions(device=torch.device(args.device)))
        extractor.embed(np.zeros((2, 224, 224, 3), np.uint8))  # warm-up
        results = {}
        for name in ("one video at a time", "cross-video batching", "one video at a time ", "cross-video batching "):
            out = Path(tmp) / f"{len(results)}.h5"
            if name.startswith("one"):
                results[name] = one_at_a_time(extractor, videos, out)
            else:
                results[name] = batched(extractor, videos, out, args.batch_size, args.workers)
            shutil.rmtree(out.with_name(out.name + ".parts"), ignore_errors=True)
    base = min(v[0] for k, v in results.items() if k.startswith("one"))
    ours = min(v[0] for k, v in results.items() if k.startswith("cross"))
    frames = next(iter(results.values()))[1]
    print(f"{args.videos} videos x {args.seconds:g} s at {args.fps:g} fps = {frames} frames, device {args.device}")
    print(f"one video at a time : {base:6.2f} s  {args.videos / base:6.2f} videos/s  {frames / base:7.1f} frames/s")
    print(f"cross-video batching: {ours:6.2f} s  {args.videos / ours:6.2f} videos/s  {frames / ours:7.1f} frames/s")
    print(f"throughput ratio (batched / one-at-a-time): {base / ours:.2f}x")


if __name__ == "__main__":
    main()
