"""IMG training-step benchmark: forward + full loss + backward of the Charades configuration (3.77 M parameters).

One batch of B=16 videos padded to Lv=128 steps (true lengths spread over 64..128, as a Charades batch is) with
Lq=12-word queries, on the CPU and, when one is visible, on a CUDA GPU in float32 and under autocast. Prints the
median time per step over the timed repeats and the peak memory (CPU: the process's peak RSS, which includes
the interpreter and torch; CUDA: peak allocated by tensors). For orientation, img_spec.md §3.6 measured the
authors' code at 3.1 s per step (with the AdamW step) at this shape on a 2-core CPU.

    python benchmarks/bench_img.py [--batch 16] [--video-len 128] [--query-len 12] [--repeats 5] [--cpu-threads N]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from contextlib import nullcontext

import torch

from img_model.network.config import IMGConfig, ObjectiveConfig
from img_model.network.losses import SpanLabels, img_loss
from img_model.network.model import IMG


def make_batch(config: IMGConfig, batch: int, video_len: int, query_len: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(video_len // 2, video_len + 1, (batch,), generator=generator)
    lengths[0] = video_len
    query_lengths = torch.randint(query_len // 2, query_len + 1, (batch,), generator=generator)
    query_lengths[0] = query_len
    video_mask = (torch.arange(video_len) < lengths.unsqueeze(1)).float()
    query_mask = (torch.arange(query_len) < query_lengths.unsqueeze(1)).float()
    starts = (torch.rand(batch, generator=generator) * lengths * 0.5).long()
    ends = torch.minimum(starts + 8, lengths - 1)
    inputs = {
        "video": torch.randn(batch, video_len, config.video_feature_dim, generator=generator).abs()
        * video_mask[..., None],
        "audio": torch.randn(batch, video_len, config.audio_feature_dim, generator=generator).abs()
        * video_mask[..., None],
        "video_mask": video_mask,
        "query_mask": query_mask,
        "word_ids": torch.randint(1, config.glove_words + 2, (batch, query_len), generator=generator)
        * query_mask.long(),
        "char_ids": torch.randint(1, config.char_vocab_size, (batch, query_len, 8), generator=generator),
    }
    labels = SpanLabels(
        starts, ends, torch.stack([starts, ends], 1), torch.stack([ends + 1, ends + 1], 1) % lengths[:, None]
    )
    return {k: v.to(device) for k, v in inputs.items()}, SpanLabels(*(t.to(device) for t in labels))


def training_step(model: IMG, inputs: dict, labels: SpanLabels, autocast: torch.dtype | None) -> None:
    device = next(model.parameters()).device
    context = torch.autocast(device.type, dtype=autocast) if autocast else nullcontext()
    with context:
        outputs = model(**inputs, p_warm=0.5)
        loss = img_loss(outputs, labels, ObjectiveConfig(), kd_warm=0.3)
    loss.total_loss.backward()
    model.zero_grad(set_to_none=True)


def measure(device: torch.device, autocast: torch.dtype | None, args: argparse.Namespace) -> tuple[float, float]:
    """(median seconds per step, peak MiB) of `args.repeats` steps after two warm-up steps."""
    config = IMGConfig()
    torch.manual_seed(0)
    model = IMG(config).to(device).train()
    inputs, labels = make_batch(config, args.batch, args.video_len, args.query_len, device)
    for _ in range(2):
        training_step(model, inputs, labels, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        training_step(model, inputs, labels, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--video-len", type=int, default=128)
    parser.add_argument("--query-len", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)

    runs: list[tuple[str, torch.device, torch.dtype | None]] = []
    if not args.skip_cpu:
        runs += [("cpu fp32", torch.device("cpu"), None), ("cpu bf16 autocast", torch.device("cpu"), torch.bfloat16)]
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        runs += [("cuda fp32", cuda, None), ("cuda fp16 autocast", cuda, torch.float16)]
        runs += [("cuda bf16 autocast", cuda, torch.bfloat16)]
    print(
        f"IMG Charades config, training step (forward + loss + backward), B={args.batch}, Lv={args.video_len}, "
        f"Lq={args.query_len}, {args.repeats} timed repeats, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    for name, device, autocast in runs:
        seconds, peak = measure(device, autocast, args)
        memory = "peak RSS" if device.type == "cpu" else "peak allocated"
        print(f"  {name:<20} {seconds * 1000:8.1f} ms/step   {memory} {peak:8.1f} MiB")


if __name__ == "__main__":
    main()
