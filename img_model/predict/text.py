"""Answers as the text img-predict prints: one block per query with the three branches side by side, the truth's
IoUs and the answer without audio (img-predict answer, and the rows of img-predict batch's summary)."""

from __future__ import annotations

from extract.core.console import format_probability
from img_model.network.metrics import temporal_iou
from img_model.predict.predictor import QueryAnswer, Span, VideoAnswers


def span_text(span: Span | None) -> str:
    return "n/a" if span is None else f"{span.start:.2f}-{span.end:.2f} s ({span.score:.4f})"


def without_audio_text(answer: QueryAnswer) -> str:
    """The --drop-audio line: the fused span with the audio removed, whether it moved, and its IoU with the truth."""
    dropped, fused = answer.drop_audio, (answer.branches or {}).get("fused")
    assert dropped is not None, "an answer without drop_audio has no such line"
    moved = fused is None or (fused.start, fused.end) != (dropped.start, dropped.end)
    line = f"without audio: fused {span_text(dropped)}, {'another span than' if moved else 'the same span as'} with it"
    if answer.truth is not None:
        iou = float(temporal_iou(dropped.start, dropped.end, *answer.truth))
        line += f"; IoU {iou:.2f}"
    return line


def answers_text(answers: VideoAnswers) -> str:
    audio = "audio used (fused branch)" if answers.audio_used else f"audio not used ({answers.note}): visual branch"
    lines = [f"{answers.video}: {answers.duration:.2f} s, {answers.num_steps} steps, {audio}; {answers.precision}"]
    if answers.glove is not None:
        added = ", ".join(answers.added_words) or "none of these queries' words"
        lines.append(f"vocabulary extended from {answers.glove}: {added}")
    for number, answer in enumerate(answers.answers, 1):
        p = answer.audio_importance
        importance = "" if p is None else f", audio importance {format_probability(p)}"
        lines.append(
            f'{number}. "{answer.query}": {answer.start:.2f}-{answer.end:.2f} s, score {answer.score:.4f}{importance}'
        )
        if answer.branches:
            lines.append(
                "   branches: " + " | ".join(f"{name} {span_text(span)}" for name, span in answer.branches.items())
            )
        if answer.truth is not None and answer.iou is not None:
            ious = " | ".join(f"{name} {'n/a' if iou is None else f'{iou:.2f}'}" for name, iou in answer.iou.items())
            lines.append(f"   truth {answer.truth[0]:.2f}-{answer.truth[1]:.2f} s, IoU: {ious}")
        if answer.drop_audio is not None:
            lines.append("   " + without_audio_text(answer))
        lines.append("   top: " + "  ".join(f"{s.start:.2f}-{s.end:.2f} ({s.score:.4f})" for s in answer.top))
    return "\n".join(lines)
