"""Parameters and FLOPs of IMG per module (the paper's Table 12: IMG, AIP only, MGF only), `img-train cost`.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode over one evaluation forward (p_warm = 1, no grad) of
one query: a multiply-add is 2 FLOPs (matmuls, convolutions; the GRUs of the multi-scale fusion and the slot
attention's GRUCell are decomposed into their matmuls and counted too); element-wise operations, softmax and
normalisation are not counted, as in fvcore and thop. Tools that count multiply-adds ("MACs") report half.

Module groups: AIP is the audio importance predictor; MGF the local, event and global fusions and the multi-scale
fusion that combines them (img_spec.md §3.4 measures MGF = 1,913,728 parameters and AIP = 513 in the authors'
code, both as Table 12 lists). "trainable" leaves out the frozen GloVe rows, which the published count of 3,774,314
also leaves out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from img_model.network.config import IMGConfig

if TYPE_CHECKING:
    import torch

    from img_model.network.model import IMG

GROUPS: dict[str, tuple[str, ...]] = {
    "AIP": ("audio_importance",),
    "MGF": ("local_fusion", "event_fusion", "global_fusion", "multi_granularity_fusion"),
}
VIDEO_STEPS = 128  # a Charades-STA video pooled to max_pos_len rows
QUERY_WORDS = 10  # Charades-STA queries have 6.2 words on average and at most 11 (img-extract datasets stats)
CHARS_PER_WORD = 8
# torch and the model are imported where a cost is counted, not with this module: img-train parses its cost
# options (VIDEO_STEPS, QUERY_WORDS) from here, and a usage error or --help must not wait seconds for torch to load.


def example_inputs(config: IMGConfig, video_steps: int, query_words: int) -> dict[str, torch.Tensor]:
    """One query of these sizes (random features, word id 1 and character id 1 everywhere)."""
    import torch

    inputs: dict[str, Any] = {
        "video": torch.randn(1, video_steps, config.video_feature_dim),
        "audio": torch.randn(1, video_steps, config.audio_feature_dim),
        "video_mask": torch.ones(1, video_steps),
        "query_mask": torch.ones(1, query_words),
    }
    if config.query_features == "glove_char":
        inputs["word_ids"] = torch.ones(1, query_words, dtype=torch.long)
        inputs["char_ids"] = torch.ones(1, query_words, CHARS_PER_WORD, dtype=torch.long)
    else:
        inputs["query_features"] = torch.randn(1, query_words, config.text_feature_dim)
    return inputs


def model_cost(
    config: IMGConfig, video_steps: int = VIDEO_STEPS, query_words: int = QUERY_WORDS, model: IMG | None = None
) -> dict[str, Any]:
    """{"modules": {name: {"parameters", "trainable", "flops"}}, "groups": {...}, "total": {...}, "inputs": {...}}
    for the top-level modules of IMG (with `model`'s weights when given; the counts do not depend on them)."""
    from torch.utils.flop_counter import FlopCounterMode

    from img_model.network.model import IMG

    model = model if model is not None else IMG(config)
    model.eval()
    with FlopCounterMode(display=False) as counter:  # with autograd on: its module tracker needs grad_fns
        model(**example_inputs(config, video_steps, query_words), p_warm=1.0)
    flops = counter.get_flop_counts()
    root = type(model).__name__  # the tracker names modules by their path under the class name of the root
    modules: dict[str, dict[str, int]] = {}
    for name, child in model.named_children():
        modules[name] = {
            "parameters": sum(p.numel() for p in child.parameters()),
            "trainable": sum(p.numel() for p in child.parameters() if p.requires_grad),
            "flops": int(sum(flops.get(f"{root}.{name}", {}).values())),
        }
    groups = {
        group: {key: sum(modules[m][key] for m in members) for key in ("parameters", "trainable", "flops")}
        for group, members in GROUPS.items()
    }
    total = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": model.trainable_parameters(),
        "flops": int(sum(flops["Global"].values())),
    }
    return {
        "modules": modules,
        "groups": groups,
        "total": total,
        "inputs": {"batch": 1, "video_steps": video_steps, "query_words": query_words},
    }


def cost_table(cost: dict[str, Any]) -> str:
    """Table 12's columns (params in millions, GFLOPs) per module, the groups and the whole model."""
    lines = [f"{'module':<26}{'params':>12}{'trainable':>12}{'params (M)':>12}{'GFLOPs':>11}{'GMACs':>11}"]

    def row(name: str, entry: dict[str, int]) -> str:
        return (
            f"{name:<26}{entry['parameters']:>12,}{entry['trainable']:>12,}"
            f"{entry['trainable'] / 1e6:>12.4g}{entry['flops'] / 1e9:>11.4g}{entry['flops'] / 2e9:>11.4g}"
        )

    lines += [row(name, entry) for name, entry in cost["modules"].items()]
    lines.append("")
    lines += [row(f"{name} (Table 12)", entry) for name, entry in cost["groups"].items()]
    lines.append(row("IMG (Table 12)", cost["total"]))
    inputs = cost["inputs"]
    lines.append(
        f"one query: {inputs['video_steps']} video steps, {inputs['query_words']} words; FLOPs = 2 x multiply-adds "
        "(torch.utils.flop_counter); MACs = multiply-adds, what thop and fvcore call FLOPs"
    )
    return "\n".join(lines)
