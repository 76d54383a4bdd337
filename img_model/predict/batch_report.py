"""img-predict batch's HTML summary: one self-contained page (no script, nothing fetched) of a batch's answers.

At the top, the counts (rows, answered, failed, time) and, over the rows with a true span, each branch's mean IoU
and R1@0.5 / R1@0.7 (the share of those rows whose answer has at least that IoU), the answer without audio too
when it was asked; the mean audio importance over the rows that used audio. Then one table row per manifest row:
the video and query, a timeline (the true span outlined, the fused, visual and audio spans as bars, the answer
without audio dashed), the spans and IoUs as text, the audio importance, the words read from GloVe and those read
as <UNK>, or the row's error. Videos are named by their id and the file as the manifest gives it, never by a
path of the machine that ran the batch.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from extract.core.console import format_probability
from img_model.network.metrics import temporal_iou

BRANCH_COLOURS = {"fused": "#2ca02c", "visual": "#1f77b4", "audio": "#ff7f0e"}
THRESHOLDS = (0.5, 0.7)
TIMELINE_WIDTH, BAR_HEIGHT = 320, 7

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; font-size: 13px; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.spans { white-space: nowrap; }
.error { color: #b00020; }
.key span { display: inline-block; margin-right: 14px; font-size: 12px; }
.key i { display: inline-block; width: 14px; height: 8px; margin-right: 4px; }
svg text { font-size: 11px; fill: #555; }
"""


def _text(value: Any) -> str:
    return html.escape(str(value))


def branch_metrics(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Per branch (and "without audio" when asked) over the answered rows with a truth: rows, mean IoU, R1@t."""
    ious: dict[str, list[float]] = {}
    for result in results:
        truth = result.get("truth")
        if "error" in result or not truth:
            continue
        for name, iou in (result.get("iou") or {}).items():
            if iou is not None:
                ious.setdefault(name, []).append(float(iou))
        dropped = result.get("drop_audio")
        if dropped:
            iou = float(temporal_iou(dropped["start"], dropped["end"], truth["start"], truth["end"]))
            ious.setdefault("without audio", []).append(iou)
    return {
        name: {
            "rows": len(values),
            "mean_iou": sum(values) / len(values),
            **{f"R1@{t}": sum(v >= t for v in values) / len(values) for t in THRESHOLDS},
        }
        for name, values in ious.items()
    }


def _timeline(result: Mapping[str, Any]) -> str:
    duration = float(result["duration"])

    def x(seconds: float) -> float:
        return round(max(0.0, min(seconds, duration)) / duration * TIMELINE_WIDTH, 1)

    bars = []
    branches = result.get("branches") or {}
    for level, name in enumerate(("fused", "visual", "audio")):
        span = branches.get(name)
        if span is None:
            continue
        y = 4 + level * (BAR_HEIGHT + 3)
        width = max(x(span["end"]) - x(span["start"]), 1.0)
        bars.append(
            f'<rect x="{x(span["start"])}" y="{y}" width="{width}" height="{BAR_HEIGHT}" '
            f'fill="{BRANCH_COLOURS[name]}"><title>{name} {span["start"]:.2f}-{span["end"]:.2f} s</title></rect>'
        )
    dropped = result.get("drop_audio")
    if dropped:
        y = 4 + 3 * (BAR_HEIGHT + 3) + BAR_HEIGHT / 2
        bars.append(
            f'<line x1="{x(dropped["start"])}" x2="{x(dropped["end"])}" y1="{y}" y2="{y}" stroke="#2ca02c" '
            'stroke-width="3" stroke-dasharray="4 3"><title>fused without audio</title></line>'
        )
    truth = result.get("truth")
    if truth:
        bars.append(
            f'<rect x="{x(truth["start"])}" y="1" width="{max(x(truth["end"]) - x(truth["start"]), 1.0)}" '
            f'height="{4 * (BAR_HEIGHT + 3) + 2}" fill="none" stroke="#000" stroke-width="1.5">'
            f"<title>truth {truth['start']:.2f}-{truth['end']:.2f} s</title></rect>"
        )
    height = 4 * (BAR_HEIGHT + 3) + 20
    axis = (
        f'<line x1="0" x2="{TIMELINE_WIDTH}" y1="{height - 16}" y2="{height - 16}" stroke="#999"/>'
        f'<text x="0" y="{height - 3}">0 s</text>'
        f'<text x="{TIMELINE_WIDTH}" y="{height - 3}" text-anchor="end">{duration:.1f} s</text>'
    )
    return f'<svg width="{TIMELINE_WIDTH}" height="{height}" role="img">{"".join(bars)}{axis}</svg>'


def _spans(result: Mapping[str, Any]) -> str:
    lines = []
    iou = result.get("iou") or {}
    for name, span in (result.get("branches") or {}).items():
        if span is None:
            lines.append(f"{name}: n/a")
            continue
        score = f" IoU {iou[name]:.2f}" if iou.get(name) is not None else ""
        lines.append(f"{name}: {span['start']:.2f}-{span['end']:.2f} s{score}")
    dropped, truth = result.get("drop_audio"), result.get("truth")
    if dropped:
        score = ""
        if truth:
            score = f" IoU {float(temporal_iou(dropped['start'], dropped['end'], truth['start'], truth['end'])):.2f}"
        lines.append(f"without audio: {dropped['start']:.2f}-{dropped['end']:.2f} s{score}")
    if truth:
        lines.append(f"truth: {truth['start']:.2f}-{truth['end']:.2f} s")
    return "<br>".join(_text(line) for line in lines)


def _row(result: Mapping[str, Any]) -> str:
    head = (
        f'<td class="num">{result["row"]}</td><td>{_text(result["video_id"])}<br><small>{_text(result["video"])}'
        f"</small></td><td>{_text(result['query'])}</td>"
    )
    if "error" in result:
        return f'<tr>{head}<td colspan="4" class="error">{_text(result["error"])}</td></tr>'
    importance = result.get("audio_importance")
    audio = "n/a (no audio used)" if importance is None else format_probability(importance)
    words = []
    if result.get("glove_words"):
        words.append("from GloVe: " + ", ".join(result["glove_words"]))
    if result.get("unknown_words"):
        words.append("<UNK>: " + ", ".join(result["unknown_words"]))
    return (
        f'<tr>{head}<td>{_timeline(result)}</td><td class="spans">{_spans(result)}</td>'
        f'<td class="num">{_text(audio)}</td>'
        f"<td>{'<br>'.join(_text(word) for word in words)}</td></tr>"
    )


def batch_report(results: Sequence[Mapping[str, Any]], summary: str, title: str = "img-predict batch") -> str:
    """The HTML page of these JSONL results (img-predict batch's lines) under the run's summary line."""
    metrics = branch_metrics(results)
    importances = [
        float(r["audio_importance"]) for r in results if "error" not in r and r.get("audio_importance") is not None
    ]
    parts = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_text(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{_text(title)}</h1><p>{_text(summary)}</p>"
    ]
    if metrics:
        header = "".join(f"<th>R1@{t}</th>" for t in THRESHOLDS)
        rows = "".join(
            f'<tr><td>{_text(name)}</td><td class="num">{m["rows"]}</td><td class="num">{m["mean_iou"]:.3f}</td>'
            + "".join(f'<td class="num">{m[f"R1@{t}"]:.3f}</td>' for t in THRESHOLDS)
            + "</tr>"
            for name, m in metrics.items()
        )
        parts.append(
            "<h2>Rows with a true span</h2><table><tr><th>branch</th><th>rows</th><th>mean IoU</th>"
            f"{header}</tr>{rows}</table>"
        )
    if importances:
        mean = format_probability(sum(importances) / len(importances))
        parts.append(f"<p>Mean audio importance over the {len(importances)} answers that used audio: {mean}</p>")
    key = "".join(f'<span><i style="background:{c}"></i>{n}</span>' for n, c in BRANCH_COLOURS.items())
    parts.append(
        f'<h2>Answers</h2><p class="key">{key}<span><i style="border:1.5px solid #000"></i>truth</span>'
        '<span><i style="border-top:3px dashed #2ca02c"></i>fused without audio</span></p>'
        "<table><tr><th>row</th><th>video</th><th>query</th><th>timeline</th><th>spans</th>"
        "<th>audio importance</th><th>words</th></tr>"
    )
    parts.extend(_row(result) for result in results)
    parts.append("</table></body></html>\n")
    return "".join(parts)
