"""img-predict --plot: a figure of the answers on the video's timeline (matplotlib, Agg backend: no display).

Top panel: the audio waveform (the file's soundtrack as the audio models hear it: mono, the mean of the
channels), as its peak envelope; it is decoded only when the answers used the audio (a stream that failed to
decode for the features is not decoded again: the panel says the audio could not be decoded). Then one panel
per query: P_start and P_end over the steps of the video's grid, the chosen span shaded, the top-k spans as
bars under the curves (best first, darkest), the true span when one was given (hatched, "truth"), the saliency
head's raw score per step on its own right-hand axis (dotted, "saliency"), and in the title the score, the
audio-importance score (or that no audio was used) and the IoU of the answer with the truth.

img-predict checks the --plot path (check_plot_path) before it computes anything, and writes the figure after
it has printed the answers: a figure that cannot be drawn never loses them. `video_figure(answers)` is that figure
as a matplotlib Figure (its artists named by gid: see answers_figure), for notebooks and tests.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from extract.core.errors import ImgVmrError, UsageError, writing
from extract.core.files import check_writable, write_atomically
from extract.media.decode import AudioSampling, iter_audio
from extract.media.probe import probe
from img_model.predict.predictor import VideoAnswers

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(f"img_vmr.{__name__}")

WAVEFORM_RATE = 8000  # samples per second decoded for the picture
WAVEFORM_BINS = 2000
PLOT_DPI = 100


def read_envelope(video: str | os.PathLike[str], duration: float, bins: int = WAVEFORM_BINS) -> np.ndarray | None:
    """[bins, 2] (min, max) of the mono soundtrack over equal slices of [0, duration]; None without audio.

    Streamed chunk by chunk: memory does not grow with the video's length."""
    stream = probe(video)
    if not stream.has_audio:
        return None
    per_bin = max(duration, 1e-6) * WAVEFORM_RATE / bins
    low, high = np.zeros(bins, np.float32), np.zeros(bins, np.float32)
    for chunk in iter_audio(stream, AudioSampling(sample_rate=WAVEFORM_RATE, chunk_seconds=10.0)):
        first = round(chunk.start_seconds * WAVEFORM_RATE)
        index = np.minimum(((first + np.arange(len(chunk.samples))) / per_bin).astype(np.int64), bins - 1)
        np.minimum.at(low, index, chunk.samples)
        np.maximum.at(high, index, chunk.samples)
    return np.stack([low, high], axis=1)


def image_formats() -> list[str]:
    """The file suffixes matplotlib's Agg canvas writes (png, svg, pdf, jpg...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return sorted(FigureCanvasAgg(Figure()).get_supported_filetypes())


def check_plot_path(path: Path) -> None:
    """UsageError (one line) unless a figure can be written at `path`: a suffix matplotlib knows, and a folder
    (or the nearest existing folder above a missing one) where a file can be created. Creates nothing."""
    formats = image_formats()
    if path.suffix.lower().lstrip(".") not in formats:
        shown = ", ".join(f".{name}" for name in formats if name in ("png", "svg", "pdf", "jpg"))
        raise UsageError(f"--plot {path}: the suffix says no image format matplotlib writes; use {shown}")
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "not a folder")
        check_writable(folder)
    except OSError as error:
        raise UsageError(
            f"--plot {path}: cannot write in {folder} ({error.strerror or error}); choose a writable path"
        ) from None


def write_plot(answers: VideoAnswers, out: str | os.PathLike[str]) -> Path:
    """The figure of these answers (video_figure) written at `out`; the format follows the suffix."""
    figure = video_figure(answers)
    path = Path(out)
    with writing(f"--plot {out}", path.parent):  # whole or not at all: a full disk leaves no half figure
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(
            path, lambda handle: figure.savefig(handle, format=path.suffix.lower().lstrip("."), dpi=PLOT_DPI)
        )
    return path


def video_figure(answers: VideoAnswers) -> Figure:
    """The figure img-predict --plot writes: answers_figure with the video's waveform, read only when the audio
    was used (a stream that fails to decode is a warning and a figure without it)."""
    envelope = None
    if answers.audio_used:
        try:
            envelope = read_envelope(answers.video, answers.duration)
        except ImgVmrError as error:
            log.warning("the plot shows no waveform: %s", error)
    return answers_figure(answers, envelope)


def answers_figure(answers: VideoAnswers, envelope: np.ndarray | None) -> Figure:
    """A matplotlib Figure (Agg canvas, no pyplot state) of the answers over the video's timeline.

    Its artists carry ids (`get_gid()`) naming what they show: "waveform" (the envelope, [bins, 2] min/max over
    equal slices of the duration), and per query n: "p_start:n" and "p_end:n" (steps over `step_times()`),
    "answer:n" (the chosen span, shaded), "top:n:k" (the k-th most probable distinct span, best first), "truth:n"
    (the true span, when given) and "saliency:n" (the saliency per step, on a right-hand axis of its own: a twin
    of the panel's, so `figure.axes` holds it after the panels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = len(answers.answers) + 1
    figure = Figure(figsize=(10, 1.4 + 1.9 * (rows - 1)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    duration = answers.duration
    wave = axes[0]
    missing = "audio could not be decoded" if answers.has_audio else "no audio stream"  # the note is too long here
    if envelope is not None:
        times = (np.arange(len(envelope)) + 0.5) * duration / len(envelope)
        wave.fill_between(times, envelope[:, 0], envelope[:, 1], color="#555555", linewidth=0, gid="waveform")
        wave.set_ylim(-1.05, 1.05)
    else:
        wave.text(0.5, 0.5, missing, ha="center", va="center", transform=wave.transAxes, color="#777777")
        wave.set_yticks([])
    audio = "audio used" if answers.audio_used else f"audio not used: {missing}"
    wave.set_title(f"{Path(answers.video).name}: {duration:.2f} s, {answers.num_steps} steps; {audio}", fontsize=10)
    wave.set_ylabel("audio")
    edges = answers.step_times()
    for number, (axis, answer) in enumerate(zip(axes[1:], answers.answers, strict=True)):
        axis.stairs(answer.start_probabilities, edges, color="#1f77b4", label="P(start)", gid=f"p_start:{number}")
        axis.stairs(answer.end_probabilities, edges, color="#d62728", label="P(end)", gid=f"p_end:{number}")
        peak = max(max(answer.start_probabilities), max(answer.end_probabilities))
        axis.axvspan(answer.start, answer.end, color="#2ca02c", alpha=0.18, label="answer", gid=f"answer:{number}")
        if answer.truth is not None:
            axis.axvspan(
                *answer.truth,
                facecolor="none",
                edgecolor="#000000",
                hatch="//",
                linewidth=1.0,
                label="truth",
                gid=f"truth:{number}",
            )
        for rank, span in enumerate(answer.top):
            level = -0.06 * peak * (rank + 1)
            axis.hlines(
                level,
                span.start,
                span.end,
                color="#2ca02c",
                alpha=1.0 - 0.15 * rank,
                linewidth=3,
                gid=f"top:{number}:{rank}",
            )
        axis.set_ylim(-0.06 * peak * (len(answer.top) + 1.5), peak * 1.15)
        importance = (
            f"audio importance {answer.audio_importance:.2f}"
            if answer.audio_importance is not None
            else "no audio: visual branch"
        )
        truth = "" if answer.iou is None else f"; IoU {answer.iou[answer.branch] or 0:.2f} with the truth"
        axis.set_title(
            f'"{answer.query}": {answer.start:.2f}-{answer.end:.2f} s, score {answer.score:.3f}; {importance}; '
            f"bars: top {len(answer.top)}{truth}",
            fontsize=9,
        )
        axis.set_ylabel("probability")
        handles, labels = axis.get_legend_handles_labels()
        if answer.saliency:
            right = axis.twinx()
            centres = (edges[:-1] + edges[1:]) / 2
            (line,) = right.plot(
                centres,
                answer.saliency,
                color="#7f7f7f",
                linestyle=":",
                marker=".",
                label="saliency",
                gid=f"saliency:{number}",
            )
            right.set_ylabel("saliency (raw)", fontsize=8)
            right.tick_params(labelsize=7)
            handles, labels = [*handles, line], [*labels, "saliency"]
        axis.legend(handles, labels, loc="upper right", fontsize=7)
    axes[-1].set_xlim(0, duration)
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    return figure
