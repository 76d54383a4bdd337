"""The training objective of IMG (img_spec.md §4), as the authors' training loop combines it.

`img_loss` takes the model outputs and the batch labels and returns every term per sample, the pseudo-label
gate and the total. Computed in float32 with autocast off, whatever precision the forward used.

In a distributed run each process holds part of the batch (`BatchScope`): the batch means divide by the whole
batch's size and the kept samples are counted over every process, so each process's total is its share of the
batch's loss and the shares sum to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from img_model.network.config import IMGConfig, ObjectiveConfig
from img_model.network.model import IMGOutput

_KEEP_EPS = 1e-6  # added to the number of kept samples before dividing, as the authors do


class SpanLabels(NamedTuple):
    """Labels of a training batch: start / end step indices (B,) and saliency positives / negatives (B, P)."""

    start_index: torch.Tensor
    end_index: torch.Tensor
    saliency_positives: torch.Tensor
    saliency_negatives: torch.Tensor


def _one_process(count: torch.Tensor) -> torch.Tensor:
    return count


@dataclass(frozen=True)
class BatchScope:
    """The training batch this process's samples belong to: `size` samples in all (the B of the batch means and
    of the saliency normalisation), the count of kept samples summed over the processes by `sum_over_processes`,
    and `weight` 0 for a process that computes a stand-in sample because it has none of its own."""

    size: int
    weight: float = 1.0
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] = _one_process

    def mean(self, per_sample: torch.Tensor) -> torch.Tensor:
        """This process's share of the batch mean of a per-sample term (the mean itself in one process, bit for
        bit: the share is then exactly 1)."""
        return per_sample.mean() * (self.weight * per_sample.shape[0] / self.size)

    def sum(self, per_sample: torch.Tensor) -> torch.Tensor:
        """This process's share of the batch sum of a per-sample term."""
        return per_sample.sum() * self.weight


class IMGLoss(NamedTuple):
    """Per-sample terms (B,), the pseudo-label gate, each term of the batch as it enters the total (the audio ones
    gated by `keep`), the four weighted terms and their sum `total_loss` (in a distributed run: this process's
    share of the batch values, see BatchScope)."""

    loc_av: torch.Tensor  # CE(start) + CE(end) of the fused branch
    loc_v: torch.Tensor
    loc_a: torch.Tensor
    sal_v: torch.Tensor  # saliency hinge, already divided by B
    sal_a: torch.Tensor
    sal_av: torch.Tensor
    kd_a: torch.Tensor  # distillation from the fused branch into the audio branch
    kd_v: torch.Tensor
    pl_label: torch.Tensor  # pseudo-label of the audio importance
    keep: torch.Tensor  # int64 (B,): samples whose audio-branch terms count
    n_keep: torch.Tensor  # kept samples in the whole batch
    pl_loss: torch.Tensor  # mean BCE(aip_prob, pl_label)
    location_fused: torch.Tensor  # batch mean of loc_av; location_visual: of loc_v; location_audio: gated mean
    location_visual: torch.Tensor
    location_audio: torch.Tensor
    saliency_fused: torch.Tensor  # batch sum of sal_av (already divided by B); saliency_audio: gated sum
    saliency_visual: torch.Tensor
    saliency_audio: torch.Tensor
    distill_audio: torch.Tensor  # gated mean of kd_a; distill_visual: batch mean of kd_v
    distill_visual: torch.Tensor
    term_loc: torch.Tensor
    term_sal: torch.Tensor
    term_kd: torch.Tensor
    term_pl: torch.Tensor
    total_loss: torch.Tensor


def location_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, labels: SpanLabels) -> torch.Tensor:
    """CE over the steps of the start and of the end logits, summed, per sample."""
    start = F.cross_entropy(start_logits, labels.start_index, reduction="none")
    return start + F.cross_entropy(end_logits, labels.end_index, reduction="none")


def saliency_loss(
    scores: torch.Tensor, labels: SpanLabels, margin: float, batch_size: int | None = None
) -> torch.Tensor:
    """Σ_pairs max(0, margin + s[neg] − s[pos]) / (B·P) · 2 per sample: the authors' normalisation, which carries
    the 1/B of a batch mean (B: `batch_size`, default the rows of `scores`)."""
    positives = scores.gather(1, labels.saliency_positives)
    negatives = scores.gather(1, labels.saliency_negatives)
    hinge = torch.clamp(margin + negatives - positives, min=0).sum(dim=1)
    return hinge / ((batch_size or positives.shape[0]) * positives.shape[1]) * 2


def distillation_loss(
    student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor], temperature: float
) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)) summed over the steps, start plus end, per sample. The
    teacher is detached; masked steps have teacher probability 0 and contribute 0."""

    def kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        log_student = F.log_softmax(student_logits / temperature, dim=1)
        target = F.softmax(teacher_logits.detach() / temperature, dim=1)
        return temperature**2 * F.kl_div(log_student, target, reduction="none").sum(dim=1)

    return kl(student[0], teacher[0]) + kl(student[1], teacher[1])


def pseudo_labels(
    loss_v: torch.Tensor, loss_a: torch.Tensor, threshold: float, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The audio-importance target from the two branches' location losses (detached): y = exp(Lv/γ) / (exp(La/γ)
    + exp(Lv/γ)), written as sigmoid((Lv − La)/γ), which does not overflow (§7.13). Returns (label, keep):
    keep = y > ε; label = 0 where not kept, 1 where y > 1 − ε, else y."""
    y = torch.sigmoid((loss_v.detach() - loss_a.detach()) / temperature)
    keep = (y > threshold).long()
    label = y * keep
    return torch.where(label > 1 - threshold, torch.ones_like(label), label), keep


def img_loss(
    outputs: IMGOutput,
    labels: SpanLabels,
    config: ObjectiveConfig,
    kd_warm: float,
    scope: BatchScope | None = None,
    model: IMGConfig | None = None,
) -> IMGLoss:
    """The full objective of one training step (§4.5), in the authors' order of operations. `kd_warm` is the
    distillation warm-up factor of the current epoch, `exp_up(epoch, config.distill_warmup_epochs)`; `scope`
    the whole batch when these outputs are part of it (default: they are the batch); `model` the config of the
    model that made the outputs (default: the published one).

    The pseudo-label gate `keep` also masks the audio-branch location, saliency and distillation terms (§7.7);
    the audio saliency is still divided by B.

    Ablated models (docs/model.md, "Ablations") have only the terms that exist for them: without the audio
    importance predictor there is no pseudo-label, so no importance loss and no gate (every sample kept); without
    audio the fused branch is the visual one, and only the visual location and saliency terms remain. The terms
    that do not exist are 0."""
    model = model or IMGConfig()
    scope = scope or BatchScope(outputs.start_logits_v.shape[0])
    with torch.autocast(outputs.start_logits_v.device.type, enabled=False):
        out = IMGOutput(*(None if tensor is None else tensor.float() for tensor in outputs))
        av = (out.start_logits_av, out.end_logits_av)
        loc_v = location_loss(out.start_logits_v, out.end_logits_v, labels)
        sal_v = saliency_loss(out.v_score, labels, config.saliency_margin, scope.size)
        absent = torch.zeros_like(loc_v)
        if model.audio:
            loc_av = location_loss(*av, labels)
            loc_a = location_loss(out.start_logits_a, out.end_logits_a, labels)  # type: ignore[arg-type]
            sal_a = saliency_loss(out.a_score, labels, config.saliency_margin, scope.size)  # type: ignore[arg-type]
            sal_av = saliency_loss(out.av_score, labels, config.saliency_margin, scope.size)
            kd_a = distillation_loss((out.start_logits_a, out.end_logits_a), av, config.distill_temperature)  # type: ignore[arg-type]
            kd_v = distillation_loss((out.start_logits_v, out.end_logits_v), av, config.distill_temperature)
        else:
            loc_av = loc_a = sal_a = sal_av = kd_a = kd_v = absent

        if model.predicts_importance:
            pl_label, keep = pseudo_labels(loc_v, loc_a, config.pseudo_label_threshold, config.pseudo_label_temperature)
            bce = F.binary_cross_entropy(out.aip_prob, pl_label)  # type: ignore[arg-type]
        else:
            pl_label, keep, bce = absent, torch.ones_like(loc_v, dtype=torch.long), absent.sum()
        pl_loss = bce * (scope.weight * len(pl_label) / scope.size)  # the share of the mean, as BatchScope.mean
        kept = keep.float() * scope.weight
        n_keep = scope.sum_over_processes(kept.sum())
        denominator = n_keep + _KEEP_EPS

        location = (scope.mean(loc_av), scope.mean(loc_v), (kept * loc_a).sum() / denominator)
        saliency = (scope.sum(sal_av), scope.sum(sal_v), (kept * sal_a).sum())
        distill = ((kept * kd_a).sum() / denominator, scope.mean(kd_v))
        term_loc = location[0] + location[1] + location[2]
        term_sal = config.saliency_weight * (saliency[2] + saliency[0] + saliency[1])
        term_kd = config.distill_weight * kd_warm * (distill[0] + distill[1])
        term_pl = config.importance_weight * pl_loss
        total = term_loc + term_sal + term_kd + term_pl
    return IMGLoss(
        loc_av,
        loc_v,
        loc_a,
        sal_v,
        sal_a,
        sal_av,
        kd_a,
        kd_v,
        pl_label,
        keep,
        n_keep,
        pl_loss,
        *location,
        *saliency,
        *distill,
        term_loc,
        term_sal,
        term_kd,
        term_pl,
        total,
    )


LOSS_SCALARS = {
    "loss/location_fused": "location_fused",
    "loss/location_visual": "location_visual",
    "loss/location_audio": "location_audio",
    "loss/saliency_fused": "saliency_fused",
    "loss/saliency_visual": "saliency_visual",
    "loss/saliency_audio": "saliency_audio",
    "loss/distill_audio": "distill_audio",
    "loss/distill_visual": "distill_visual",
    "loss/importance": "pl_loss",
    "terms/location": "term_loc",
    "terms/saliency": "term_sal",
    "terms/distill": "term_kd",
    "terms/importance": "term_pl",
}


def loss_scalars(loss: IMGLoss, scope: BatchScope) -> dict[str, torch.Tensor]:
    """Every loss term of §4.5 as it enters the total, per step (this process's share of the batch's value)."""
    terms = {name: getattr(loss, field) for name, field in LOSS_SCALARS.items()}
    return {"loss/total": loss.total_loss, **terms, "loss/kept_fraction": scope.mean(loss.keep.float())}
