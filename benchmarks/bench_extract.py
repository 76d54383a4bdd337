"""Extraction benchmark: cross-video batching vs one video at a time, for any preset, in one process.

The baseline is what a typical per-video script does: probe, decode one video, cut its units, embed them in
batches of that video only, write, next video. Ours is `extract.run.ExtractionRun` (parallel decode threads,
batches filled across videos, a writer thread). Both use the same decoder, model and store; the ratio is printed.

    python benchmarks/bench_extract.py --features clip                 # tiny random CLIP (no download)
    python benchmarks/bench_extract.py --features i3d-charades-vslnet --videos 8 --seconds 6
    python benchmarks/bench_extract.py --features panns --videos 16 --seconds 10
    python benchmarks/bench_extract.py --features i3d,panns --device cuda --precision bf16   # on a GPU node

Published models get randomly initialised weights in their published layouts (timing does not depend on the
values). On CUDA with --precision fp16/bf16 the script also reports the per-row cosine of the autocast features
against fp32 on the same inputs (target >= 0.999).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.media.decode import AudioChunk, FrameBatch, iter_audio, iter_frames
from extract.media.probe import probe
from extract.media.sources import VideoSource, scan_folder
from extract.models import ExtractorOptions, FeatureExtractor, build_extractor
from extract.models.base import Units
from extract.models.presets import get_preset
from extract.run import ExtractionRun, RunConfig
from extract.run.provenance import provenance_records
from extract.store import StoreWriter, Track, VideoRecord

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: benchmarks.fixtures is found from the checkout
    sys.path.insert(0, str(ROOT))


def random_weights(folder: Path) -> Path:
    """Randomly initialised models saved under the published names and layouts, plus a tiny CLIP."""
    from benchmarks.fixtures import random_clip
    from extract.models.i3d import InceptionI3d
    from extract.models.panns import Cnn14
    from extract.models.vggish import VGGish

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(InceptionI3d(400).state_dict(), folder / "rgb_imagenet.pt")
    torch.save(InceptionI3d(157).state_dict(), folder / "rgb_charades.pt")
    torch.save(VGGish().state_dict(), folder / "vggish-10086976.pth")
    pca = {"pca_eigen_vectors": torch.eye(128, dtype=torch.float64), "pca_means": torch.zeros(128, dtype=torch.float64)}
    torch.save(pca, folder / "vggish_pca_params-970ea276.pth")
    torch.save({"model": Cnn14().state_dict()}, folder / "Cnn14_mAP=0.431.pth")
    random_clip(folder / "tiny-clip")
    return folder


def decoded_chunks(extractor: FeatureExtractor, path: Path) -> Iterator[tuple[Any, float]]:
    """The decoded chunks of one video as the extractor samples it, each with how much input it is (frames, or
    seconds of audio)."""
    meta = probe(path)
    if extractor.frame_sampling is not None:
        for chunk in iter_frames(meta, extractor.frame_sampling):
            yield chunk, float(len(chunk))
    else:
        assert extractor.audio_sampling is not None
        for chunk in iter_audio(meta, extractor.audio_sampling):
            yield chunk, len(chunk.samples) / extractor.audio_sampling.sample_rate


def _units_of(extractor: FeatureExtractor, path: Path) -> tuple[list[Units], float]:
    """All units of one video and how much input they stand for (frames, or seconds of audio)."""
    windower = extractor.windower()
    units, amount = [], 0.0
    for chunk, size in decoded_chunks(extractor, path):
        amount += size
        units.append(windower.push(chunk))
    units.append(windower.finish())
    return [u for u in units if u is not None and len(u)], amount


def one_at_a_time(extractor: FeatureExtractor, videos: Path, out: Path, batch_size: int) -> tuple[float, float]:
    start = time.perf_counter()
    writer = StoreWriter(out, provenance_records([extractor]))
    total = 0.0
    limit = min(batch_size, extractor.max_batch or batch_size)
    for source in scan_folder(videos):
        units, amount = _units_of(extractor, source.path)
        inputs = np.concatenate([u.inputs for u in units])
        spans = np.concatenate([u.spans for u in units])
        rows = np.concatenate([extractor.embed(inputs[i : i + limit]) for i in range(0, len(inputs), limit)])
        total += amount
        track = Track(rows.reshape(-1, rows.shape[-1]), spans.reshape(-1, 2))
        writer.add_video(VideoRecord(source.video_id, {}, {extractor.name: track}))
    writer.close()
    return time.perf_counter() - start, total


def batched(extractor: FeatureExtractor, videos: Path | list[Path], out: Path, batch_size: int, workers: int) -> float:
    """Seconds of an ExtractionRun over a folder of videos, or over these files (id: the file's stem)."""
    start = time.perf_counter()
    config = RunConfig(batch_size=batch_size, workers=workers, progress=False)
    sources = scan_folder(videos) if isinstance(videos, Path) else [VideoSource(p.stem, p) for p in videos]
    run = ExtractionRun(sources, out, [extractor.preset], extractor.options, config, lambda p, o: extractor)
    run.run()
    return time.perf_counter() - start


def synthetic_units(extractor: FeatureExtractor, seconds: float = 8.0, seed: int = 0) -> np.ndarray:
    """Model inputs cut by the extractor's own windower from frames or audio made in memory (no decoding, no
    ffmpeg): moving colour gradients with a little noise at the preset's frame rate and crop, or a chord of tones
    with noise at its sample rate."""
    generator = np.random.default_rng(seed)
    windower = extractor.windower()
    if extractor.frame_sampling is not None:
        sampling = extractor.frame_sampling
        fps = sampling.fps or 25.0
        side = sampling.crop or sampling.short_side
        count = int(seconds * fps)
        y, x = np.mgrid[0:side, 0:side] / side
        t = np.arange(count)[:, None, None] / fps
        channels = [np.sin(2 * np.pi * (x * (1 + c) + y * (2 - c) + t * (0.3 + 0.2 * c))) for c in range(3)]
        frames = 127.5 + 100 * np.stack(channels, axis=-1) + generator.normal(0, 8, (count, side, side, 3))
        pts = np.arange(count) / fps
        chunk = FrameBatch(frames.clip(0, 255).astype(np.uint8), pts, np.full(count, 1 / fps))
    else:
        assert extractor.audio_sampling is not None
        rate = extractor.audio_sampling.sample_rate
        t = np.arange(int(seconds * rate)) / rate
        tones = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 330.0, 440.0, 1250.0)) / 4
        chunk = AudioChunk((0.5 * tones + generator.normal(0, 0.05, len(t))).astype(np.float32), 0.0)
    units = [windower.push(chunk), windower.finish()]
    return np.concatenate([u.inputs for u in units if u is not None and len(u)])


def precision_check(
    name: str, weights: Path, device: torch.device, precisions: list[str], seconds: float = 8.0, units: int = 16
) -> dict:
    """Min per-row cosine between autocast (each of `precisions`) and fp32 features of the same synthetic units
    (the first `units` cut from `seconds` of input)."""
    preset = get_preset(name)
    reference = build_extractor(preset, ExtractorOptions(device, weights, "fp32", verify_weights=False))
    inputs = synthetic_units(reference, seconds)[:units]
    a = reference.embed(inputs).reshape(-1, reference.preset.output_dim).astype(np.float64)
    cosines = {}
    for precision in precisions:
        low = build_extractor(preset, ExtractorOptions(device, weights, precision, verify_weights=False))
        b = low.embed(inputs).reshape(-1, reference.preset.output_dim).astype(np.float64)
        cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        cosines[precision] = float(cosine.min())
    return cosines


def main() -> None:
    from benchmarks.fixtures import make_videos

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default="clip", help="comma-separated presets, each benchmarked alone")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    args = parser.parse_args()
    videos = args.workdir / f"clips-{args.videos}x{args.seconds:g}s"
    make_videos(videos, args.videos, args.seconds)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_weights(Path(tmp) / "weights")
        for name in args.features.split(","):
            preset = get_preset(name)
            preset = preset.with_options(weights=str(weights / "tiny-clip"))
            options = ExtractorOptions(device, weights, args.precision, verify_weights=False)
            extractor = build_extractor(preset, options)
            unit = "frames" if extractor.frame_sampling is not None else "s of audio"
            times, amount = {"one": [], "batched": []}, 0.0
            for repeat in range(2):
                out = Path(tmp) / f"{name}-{repeat}"
                seconds, amount = one_at_a_time(extractor, videos, out / "a.h5", args.batch_size)
                times["one"].append(seconds)
                times["batched"].append(batched(extractor, videos, out / "b.h5", args.batch_size, args.workers))
                shutil.rmtree(out)
            base, ours = min(times["one"]), min(times["batched"])
            print(f"{name}: {args.videos} videos x {args.seconds:g} s, {amount:.0f} {unit}, {device} {args.precision}")
            print(f"  one video at a time : {base:7.2f} s  {amount / base:8.1f} {unit}/s")
            print(f"  cross-video batching: {ours:7.2f} s  {amount / ours:8.1f} {unit}/s")
            print(f"  ratio: {base / ours:.2f}x")
            if device.type == "cuda" and args.precision != "fp32":
                cosine = precision_check(name, weights, device, [args.precision])[args.precision]
                print(f"  {args.precision} vs fp32: min cosine per row {cosine:.5f}")


if __name__ == "__main__":
    main()
