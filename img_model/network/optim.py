"""The authors' optimiser (img_spec.md §4.6): AdamW with two weight-decay groups, linear decay of the learning
rate to 0 per step, no warm-up.

The groups are the authors' *by meaning*: their rule exempts parameters whose name contains "bias",
"layer_norm" or "LayerNorm". Our names differ (`input_norm`, `video_norm`, ...), so the rule is applied to each
parameter's name in their checkpoint, through the converter's mapping table; their slot-attention LayerNorms
(`norm_input`, ...) do not match the rule and are decayed, as in their runs.
"""

from __future__ import annotations

import torch

from img_model.network.convert import mapping_table
from img_model.network.model import IMG

NO_DECAY_MARKERS = ("bias", "layer_norm", "LayerNorm")


def authors_rule_decays(official_name: str) -> bool:
    return not any(marker in official_name for marker in NO_DECAY_MARKERS)


def decay_split(model: IMG) -> tuple[list[str], list[str]]:
    """(decayed, not decayed) names of the model's trainable parameters, by the authors' rule on their names."""
    official = {rule.ours: rule.official for rule in mapping_table(model.config)}
    decayed, exempt = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            # an ablation's own weights (docs/model.md, "Ablations") have no name in their code: the rule reads ours
            (decayed if authors_rule_decays(official.get(name, name)) else exempt).append(name)
    return decayed, exempt


def parameter_groups(model: IMG, weight_decay: float) -> list[dict]:
    parameters = dict(model.named_parameters())
    decayed, exempt = decay_split(model)
    return [
        {"params": [parameters[n] for n in decayed], "weight_decay": weight_decay},
        {"params": [parameters[n] for n in exempt], "weight_decay": 0.0},
    ]


def make_optimizer(model: IMG, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate)


def linear_decay(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr_k = lr·(T − k)/T: transformers' get_linear_schedule_with_warmup with no warm-up, as the authors use."""
    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (total - step) / total))
