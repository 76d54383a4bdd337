"""One IMG training step, ours against the authors' code, on the same batch, weights and threads.

The Charades configuration (3.77 M trainable parameters), B=16 videos padded to Lv=128 steps (true lengths
64..128), Lq=12-word queries. A step is what each training loop does per batch: forward, the full loss, backward,
gradient clipping, AdamW step, learning-rate step. Ours mirrors img_model/train/trainer.py (with its finiteness check
and loss scalars); theirs mirrors the loop of their main.py (with its .item() calls), calling their IMGNet's own
loss methods. Both models hold the same weights (img_model.network.convert maps the names); before timing, the script
checks that their eval outputs agree. Steps alternate (ours, theirs, ours, ...) so that a machine shared with
other work slows both alike; wall time and process CPU time are reported per step (median), and their ratio.

Their code is not part of this project: point --authors at a checkout of it.

    git clone https://github.com/HuiGuanLab/IMG /tmp/IMG && git -C /tmp/IMG checkout dab38b9
    python benchmarks/bench_train_step.py --authors /tmp/IMG [--threads 2] [--repeats 7] [--profile]

Their model module imports IPython (for a debugger call it never makes) and transformers' AdamW (removed in
transformers 5; they build torch's AdamW anyway): the script provides stand-ins for both before importing it.
`--profile` adds a torch.profiler breakdown of our step: the operators with the most self CPU time and the
forward time of each part of the network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_img import make_batch  # beside this script

from img_model.network.config import IMGConfig, ObjectiveConfig
from img_model.network.convert import ours_to_official
from img_model.network.losses import BatchScope, SpanLabels, img_loss, loss_scalars
from img_model.network.model import IMG
from img_model.network.optim import linear_decay, make_optimizer

TOTAL_STEPS = 62_100  # 100 epochs of Charades-STA train at batch 16: the linear decay's horizon
P_WARM, KD_WARM = 0.5, 0.3  # mid-warm-up factors, the same for both


def import_authors(checkout: Path) -> types.ModuleType:
    """Their model/IMGNet.py, imported from a checkout at dab38b9 (with stand-ins for two unused imports)."""
    if not (checkout / "model" / "IMGNet.py").is_file():
        raise SystemExit(
            f"{checkout} is not a checkout of HuiGuanLab/IMG (no model/IMGNet.py); get one with\n"
            "  git clone https://github.com/HuiGuanLab/IMG /tmp/IMG && git -C /tmp/IMG checkout dab38b9"
        )
    sys.modules.setdefault("IPython", types.SimpleNamespace(embed=lambda *args, **kwargs: None))  # type: ignore
    import transformers

    if not hasattr(transformers, "AdamW"):
        transformers.AdamW = torch.optim.AdamW
    sys.path.insert(0, str(checkout))
    import model.IMGNet as authors  # their package is named `model`

    return authors


def authors_configs(config: IMGConfig) -> types.SimpleNamespace:
    """Their argparse namespace for our config (the fields IMGNet and build_optimizer_and_scheduler read)."""
    return types.SimpleNamespace(
        word_size=config.glove_words + 2,
        char_size=config.char_vocab_size,
        word_dim=config.word_dim,
        char_dim=config.char_dim,
        dim=config.dim,
        num_heads=config.num_heads,
        drop_rate=config.drop_rate,
        video_feature_dim=config.video_feature_dim,
        audio_feature_dim=config.audio_feature_dim,
        max_pos_len=config.max_pos_len,
        event_num=config.event_num,
        slot_layers=config.slot_iterations,
        layers=config.fusion_gru_layers,
        init_lr=5e-4,
        num_train_steps=TOTAL_STEPS,
        warmup_proportion=0.0,
    )


def build_models(authors: types.ModuleType, config: IMGConfig) -> tuple[IMG, torch.nn.Module]:
    torch.manual_seed(0)
    ours = IMG(config)
    glove = torch.from_numpy(np.random.default_rng(0).standard_normal((config.glove_words, config.word_dim)))
    for branch in (ours.video_branch, ours.audio_branch):
        branch.query_embedding.words.glove_vectors.copy_(glove.float())
    theirs = authors.IMGNet(authors_configs(config), word_vectors=glove.numpy().astype(np.float32))
    theirs.load_state_dict(ours_to_official(ours.state_dict(), config), strict=True)
    return ours, theirs


def their_forward(theirs: torch.nn.Module, inputs: dict[str, torch.Tensor], p_warm: float) -> tuple:
    return theirs(
        inputs["word_ids"],
        inputs["char_ids"],
        inputs["video"],
        inputs["video_mask"],
        inputs["audio"],
        inputs["query_mask"],
        p_warm,
    )


def check_same_model(ours: IMG, theirs: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Max |difference| of the visual- and audio-branch logits in eval mode (the fused branch draws their slot
    noise even in eval, §7.2, so it is left out)."""
    ours.eval(), theirs.eval()
    with torch.no_grad():
        mine = ours(**inputs, p_warm=P_WARM)
        other = their_forward(theirs, inputs, P_WARM)
    ours.train(), theirs.train()
    mask = inputs["video_mask"].bool()
    return max(float((mine[i] - other[i])[mask].abs().max()) for i in range(2, 6))


def our_step(model: IMG, inputs: dict[str, torch.Tensor], labels: SpanLabels) -> Callable[[], None]:
    """img_model/train/trainer.py's _train_step, without the TensorBoard writes."""
    optimizer = make_optimizer(model, 5e-4, 0.01)
    scheduler = linear_decay(optimizer, TOTAL_STEPS)
    objective = ObjectiveConfig()

    def step() -> None:
        outputs = model(**inputs, p_warm=P_WARM)
        if not torch.isfinite(torch.stack([output.detach().float().sum() for output in outputs])).all():
            raise FloatingPointError("non-finite outputs")
        scope = BatchScope(inputs["video"].shape[0])  # one process: the whole batch
        loss = img_loss(outputs, labels, objective, KD_WARM, scope)
        torch.stack([v.detach().float() for v in loss_scalars(loss, scope).values()]).tolist()
        optimizer.zero_grad(set_to_none=True)
        loss.total_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()

    return step


def their_step(
    authors: types.ModuleType, model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: SpanLabels
) -> Callable[[], None]:
    """The body of the training loop in their main.py (Charades: threshold 0.2, temperature 3, λ 0.5/10/5)."""
    optimizer, scheduler = authors.build_optimizer_and_scheduler(model, model.configs)
    s, e = labels.start_index, labels.end_index
    pos, neg = labels.saliency_positives, labels.saliency_negatives

    def step() -> None:
        sav, eav, sv, ev, sa, ea, v_score, a_score, av_score, param_a = their_forward(model, inputs, P_WARM)
        loc_av, loc_v, loc_a = (model.compute_loss(a, b, s, e) for a, b in ((sav, eav), (sv, ev), (sa, ea)))
        vs, as_, avs = (model.compute_score_loss(score, pos, neg) for score in (v_score, a_score, av_score))
        kl1 = model.compute_distill_loss(sa, ea, sav, eav)
        kl2 = model.compute_distill_loss(sv, ev, sav, eav)
        _ = kl1.mean().item() + kl2.mean().item() + loc_v.mean().item() + loc_a.mean().item() + loc_av.mean().item()
        ga_loss, _, keep = model.compute_ga_loss(loc_a.detach(), loc_v.detach(), param_a, 0.2, 3)
        valid = torch.sum(keep)
        total = loc_av.mean() + loc_v.mean() + torch.sum(keep * loc_a) / (valid + 1e-6)
        total += 0.5 * (torch.sum(keep * as_) + avs.sum() + vs.sum())
        total += 10 * KD_WARM * (torch.sum(keep * kl1) / (valid + 1e-6) + kl2.mean())
        total += 5 * ga_loss
        optimizer.zero_grad()
        total.backward()
        _ = ga_loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()

    return step


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[list, list]]:
    """(wall seconds, CPU seconds) per step of each, alternating between them, after two warm-up steps each."""
    for _ in range(2):
        for step in steps.values():
            step()
    times: dict[str, tuple[list, list]] = {name: ([], []) for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            times[name][0].append(time.perf_counter() - wall)
            times[name][1].append(time.process_time() - cpu)
    return times


def profile(model: IMG, step: Callable[[], None], steps: int = 3) -> None:
    """Where our step's time goes: operators by self CPU time, and the forward time of each part."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    open_ranges: list = []

    def enter(module: torch.nn.Module, args: object) -> None:
        scope = record_function(f"## {module.bench_name}")
        scope.__enter__()
        open_ranges.append(scope)

    def leave(module: torch.nn.Module, args: object, output: object) -> None:
        open_ranges.pop().__exit__(None, None, None)

    parts = [*model.named_children(), *((f"video_branch.{n}", m) for n, m in model.video_branch.named_children())]
    handles = []
    for name, module in parts:
        module.bench_name = name
        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            with record_function("## step"):
                step()
    for handle in handles:
        handle.remove()
    averages = profiler.key_averages()
    total = next(e for e in averages if e.key == "## step").cpu_time_total / steps
    print(f"\nour step under the profiler: {total / 1e3:.0f} ms; operators by self CPU time (per step):")
    operators = sorted((e for e in averages if not e.key.startswith("## ")), key=lambda e: -e.self_cpu_time_total)
    for event in operators[:15]:
        share = event.self_cpu_time_total / steps / total
        print(
            f"  {event.key[:58]:<58} {event.self_cpu_time_total / steps / 1e3:8.1f} ms {share:6.1%}  "
            f"{event.count // steps:6d} calls"
        )
    print("forward time of each part (per step; backward, loss and optimiser are the rest):")
    for event in sorted(
        (e for e in averages if e.key.startswith("## ") and e.key != "## step"), key=lambda e: -e.cpu_time_total
    ):
        print(f"  {event.key[3:]:<58} {event.cpu_time_total / steps / 1e3:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors", type=Path, required=True, help="checkout of HuiGuanLab/IMG at dab38b9")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for both (default 2)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--video-len", type=int, default=128)
    parser.add_argument("--query-len", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps of each")
    parser.add_argument("--profile", action="store_true", help="also profile our step (torch.profiler)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    authors = import_authors(args.authors)
    config = IMGConfig()
    ours, theirs = build_models(authors, config)
    inputs, labels = make_batch(config, args.batch, args.video_len, args.query_len, torch.device("cpu"))
    difference = check_same_model(ours, theirs, inputs)
    print(
        f"IMG Charades config, one training step (forward, loss, backward, clip, AdamW, lr), B={args.batch}, "
        f"Lv={args.video_len}, Lq={args.query_len}, CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; same weights (eval logits agree to {difference:.1e})"
    )
    steps = {"ours": our_step(ours, inputs, labels), "authors'": their_step(authors, theirs, inputs, labels)}
    times = time_interleaved(steps, args.repeats)
    medians = {name: (statistics.median(wall), statistics.median(cpu)) for name, (wall, cpu) in times.items()}
    for name, (wall, cpu) in medians.items():
        print(f"  {name:<9} {wall * 1e3:8.0f} ms wall  {cpu * 1e3:8.0f} ms CPU   (median of {args.repeats})")
    (our_wall, our_cpu), (their_wall, their_cpu) = medians["ours"], medians["authors'"]
    print(f"  authors' / ours: {their_wall / our_wall:.2f}x wall, {their_cpu / our_cpu:.2f}x CPU (> 1: ours faster)")
    pairs = [theirs / ours for ours, theirs in zip(times["ours"][0], times["authors'"][0], strict=True)]
    print(
        f"  per adjacent pair (theirs / ours, wall): median {statistics.median(pairs):.2f}x, "
        f"range {min(pairs):.2f}-{max(pairs):.2f}x (a machine shared with other work moves single steps)"
    )
    if args.profile:
        profile(ours, steps["ours"])


if __name__ == "__main__":
    main()
