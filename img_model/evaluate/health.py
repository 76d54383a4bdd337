"""Warnings about a run whose numbers look healthy in a table but are not: one line each, for img-train's summary,
img-eval's text and JSON ("warnings") and the HTML report.

- Collapsed audio importance: every audio importance p the AIP predicts on the queries with audio is below
  COLLAPSED_BELOW (1e-3): the fusion gives the audio no weight, and a table printing "0.000" hid it (a head at
  ~1e-17 was found so, issue 18). Queries read without audio are left out: a low p is right for them.
- Selection metric stuck at 0: the fused R1@0.7 the run selects on was 0 at every evaluation: best.pt is the
  last evaluation's model (ties count as better), selected by nothing.
- Loss spike: a training step's total loss above SPIKE_FACTOR (3) times its running mean. The running mean before
  step t is the exponential mean of the losses of steps 1..t-1, m_t = β·m_(t-1) + (1 - β)·loss_t with β =
  LOSS_MEAN_DECAY (0.95, about the last 20 steps), bias-corrected as Adam does (m_t / (1 - β^t), so that it is a
  weighted mean from the first step on). Steps 1..SPIKE_WARMUP_STEPS (20) are not checked (the mean is not settled
  yet and the loss falls fastest there); a spike enters the mean like any other step.

The training-side state (the loss's running mean, the selection scores so far) is `TrainingHealth`, kept in every
checkpoint's training record under "health": a resumed run continues it exactly, and img-eval reads the warnings
of the steps that made the checkpoint it evaluates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

COLLAPSED_BELOW = 1e-3
SPIKE_FACTOR = 3.0
LOSS_MEAN_DECAY = 0.95
SPIKE_WARMUP_STEPS = 20


def highest_importance(importances: Sequence[float | None], has_audio: Sequence[bool]) -> float | None:
    """The largest predicted audio importance of the queries read with audio; None when there is none to judge
    (no query has audio, or the model predicts no importance)."""
    values = [p for p, audio in zip(importances, has_audio, strict=True) if audio and p is not None]
    return max(values) if values else None


def collapsed_importance(importances: Sequence[float | None], has_audio: Sequence[bool], where: str) -> str | None:
    """The warning when every query with audio got an audio importance below COLLAPSED_BELOW, else None."""
    highest = highest_importance(importances, has_audio)
    if highest is None or highest >= COLLAPSED_BELOW:
        return None
    queries = sum(1 for p, audio in zip(importances, has_audio, strict=True) if audio and p is not None)
    return (
        f"audio importance collapsed: p < {COLLAPSED_BELOW:g} on all {queries} {where} queries with audio "
        f"(max {highest:.2g}): audio gets no weight"
    )


def stuck_selection(scores: Sequence[float], metric: str) -> str | None:
    """The warning when the selection metric was 0 at every evaluation of the run, else None."""
    if not scores or any(score != 0 for score in scores):
        return None
    when = "its one evaluation" if len(scores) == 1 else f"all {len(scores)} evaluations"
    return f"{metric} (selection) stayed 0 at {when}: best.pt chose nothing"


@dataclass
class LossSpikes:
    """The running mean of the training loss (see the module's docstring) and the steps whose loss spiked above
    SPIKE_FACTOR times it: `update` once per step."""

    steps: int = 0
    mean: float = 0.0  # the exponential mean before bias correction
    spikes: int = 0
    first: tuple[int, float, float] | None = None  # (step, loss, running mean) of the first spike
    worst: tuple[int, float, float] | None = None  # the same, of the spike with the highest ratio

    def running_mean(self) -> float:
        """The bias-corrected exponential mean of the losses so far (NaN before the first)."""
        return self.mean / (1 - LOSS_MEAN_DECAY**self.steps) if self.steps else float("nan")

    def update(self, step: int, loss: float) -> bool:
        """Take one step's loss; True when it spiked."""
        spiked = False
        if self.steps >= SPIKE_WARMUP_STEPS:
            mean = self.running_mean()
            if loss > SPIKE_FACTOR * mean > 0:
                spiked, record = True, (step, loss, mean)
                self.spikes += 1
                self.first = self.first or record
                if self.worst is None or loss / mean > self.worst[1] / self.worst[2]:
                    self.worst = record
        self.steps += 1
        self.mean = LOSS_MEAN_DECAY * self.mean + (1 - LOSS_MEAN_DECAY) * loss
        return spiked

    def warning(self) -> str | None:
        if not self.spikes or self.first is None or self.worst is None:
            return None
        step, loss, mean = self.worst
        first = "" if self.first == self.worst else f"; first {self.first[0]}"
        return (
            f"loss spiked > {SPIKE_FACTOR:g}x its running mean at {self.spikes} step{'s' if self.spikes > 1 else ''} "
            f"(worst step {step}: {loss:.4g} vs {mean:.4g}{first})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "mean": self.mean,
            "spikes": self.spikes,
            "first": None if self.first is None else list(self.first),
            "worst": None if self.worst is None else list(self.worst),
        }

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> LossSpikes:
        first, worst = stored.get("first"), stored.get("worst")
        return cls(
            int(stored["steps"]),
            float(stored["mean"]),
            int(stored["spikes"]),
            None if first is None else (int(first[0]), float(first[1]), float(first[2])),
            None if worst is None else (int(worst[0]), float(worst[1]), float(worst[2])),
        )


def loss_spikes(losses: Iterable[float]) -> LossSpikes:
    """The spikes of a recorded sequence of step losses (steps numbered from 1)."""
    spikes = LossSpikes()
    for step, loss in enumerate(losses, 1):
        spikes.update(step, loss)
    return spikes


@dataclass
class TrainingHealth:
    """What a training run has seen so far that the warnings need: the loss's spikes and the selection scores."""

    metric: str  # what the run selects on ("fused R1@0.7")
    loss: LossSpikes = field(default_factory=LossSpikes)
    selection_scores: list[float] = field(default_factory=list)

    def warnings(self) -> list[str]:
        found = (stuck_selection(self.selection_scores, self.metric), self.loss.warning())
        return [warning for warning in found if warning]

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "loss": self.loss.as_dict(), "selection_scores": list(self.selection_scores)}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> TrainingHealth:
        scores = [float(score) for score in stored.get("selection_scores", [])]
        return cls(str(stored["metric"]), LossSpikes.from_dict(stored["loss"]), scores)


def training_warnings(training: dict[str, Any] | None) -> list[str]:
    """The warnings a checkpoint's training record holds (the run up to the checkpoint's step), saying so; [] for
    a converted checkpoint or one written before img-train kept the record."""
    if not training or not training.get("health"):
        return []
    step = training.get("step")
    found = TrainingHealth.from_dict(training["health"]).warnings()
    return [f"{warning} (training to step {step})" for warning in found]


def warning_lines(warnings: Sequence[str]) -> list[str]:
    """The warnings as the text outputs print them: one block of "warning: ..." lines, none when all is well."""
    return ["\n".join(f"warning: {warning}" for warning in warnings)] if warnings else []
