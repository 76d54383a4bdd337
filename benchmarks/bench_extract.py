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

Backends x precisions on the CPU (`--matrix`): each cell is `img-extract` itself, a fresh process per run, with
the peak RSS of its whole process tree (benchmarks/process_tree.py); printed per preset and cell: videos/s
(median of --runs, with min-max), peak RSS (median, min-max) and the ratio to torch fp32 of the same round.
Cells run round-robin (every cell once, then again), so a machine that slows down hurts all of them alike; bf16
cells are skipped, named, on a CPU without bf16. CLIP is ViT-B/32 here (random weights).

    python benchmarks/bench_extract.py --matrix --features i3d-charades-vslnet,clip,vggish,panns --videos 6 --seconds 30
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


MATRIX = (("torch", "fp32"), ("openvino", "fp32"), ("torch", "bf16"), ("openvino", "bf16"))


def backend_matrix(names: list[str], videos: Path, weights: Path, runs: int, batch_size: int, workers: int) -> None:
    """The --matrix table (module doc)."""
    import statistics

    from benchmarks.fixtures import VIT_B_32, random_clip
    from benchmarks.process_tree import run_measured
    from extract.core.cpu import bf16_refusal
    from extract.models.backends import openvino_installed

    clip = random_clip(weights / "clip-vit-base-patch32", VIT_B_32)
    count = len(list(videos.glob("*.mp4")))
    bf16 = bf16_refusal() is None
    cells = [(b, p) for b, p in MATRIX if (b != "openvino" or openvino_installed()) and (p != "bf16" or bf16)]
    skipped = [f"{b} {p}" for b, p in MATRIX if (b, p) not in cells]
    for name in names:
        found: dict[tuple[str, str], list[Any]] = {cell: [] for cell in cells}
        for repeat in range(-1, runs):  # -1: one video per cell, untimed (the OpenVINO conversion happens there)
            for backend, precision in cells:
                out = weights.parent / "matrix-out"
                shutil.rmtree(out, ignore_errors=True)
                command = [
                    str(Path(sys.executable).parent / "img-extract"),
                    str(videos),
                    "--out",
                    str(out / "f.h5"),
                    "--features",
                    name,
                    "--weights-dir",
                    str(weights),
                    "--trust-weights",
                    "--device",
                    "cpu",
                    "--backend",
                    backend,
                    "--precision",
                    precision,
                    "--batch-size",
                    str(batch_size),
                    "--workers",
                    str(workers),
                    "--no-progress",
                    "--clip-model",
                    str(clip),
                ]
                run = run_measured([*command, "--limit", "1"] if repeat < 0 else command)
                if run.returncode:
                    raise SystemExit(f"{name} {backend} {precision} failed:\n{run.stderr[-2000:]}")
                if repeat >= 0:
                    found[(backend, precision)].append(run)
        print(f"\n{name}: {count} videos, {runs} runs per cell (round-robin)")
        print(
            f"  {'backend':<9} {'precision':<9} {'videos/s':>9} {'(min-max)':>15} {'peak RSS MiB':>13} "
            f"{'(min-max)':>11} {'vs torch fp32':>13}"
        )
        base = [count / r.wall_s for r in found[("torch", "fp32")]]
        for (backend, precision), measured in found.items():
            rates = [count / r.wall_s for r in measured]
            peaks = [r.peak_rss_mb for r in measured]
            ratios = [rate / b for rate, b in zip(rates, base, strict=True)]  # same round, same machine state
            print(
                f"  {backend:<9} {precision:<9} {statistics.median(rates):9.3f} {min(rates):7.3f}-{max(rates):<7.3f} "
                f"{statistics.median(peaks):13.0f} {min(peaks):5.0f}-{max(peaks):<5.0f} "
                f"{statistics.median(ratios):12.2f}x"
            )
        if skipped:
            print(f"  not run here: {', '.join(skipped)} (no bf16 on this CPU, or OpenVINO not installed)")


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
    parser.add_argument("--matrix", action="store_true", help="backends x precisions on the CPU (module doc)")
    parser.add_argument("--runs", type=int, default=3, help="--matrix: runs per cell")
    args = parser.parse_args()
    videos = args.workdir / f"clips-{args.videos}x{args.seconds:g}s"
    make_videos(videos, args.videos, args.seconds)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_weights(Path(tmp) / "weights")
        if args.matrix:
            backend_matrix(args.features.split(","), videos, weights, args.runs, args.batch_size, args.workers)
            return
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
