"""Evaluating a checkpoint on the splits of a dataset (what img-eval runs): `evaluate_checkpoint(request)`.

img-eval's flags map one to one onto EvaluationRequest; the decisions live here, where pipelines and tests call
them without click: the data defaults to what the checkpoint's run recorded (inputs made otherwise are refused,
evaluator.check_inputs), the splits (the run's train-val re-carved, DataSources.evaluation_splits), the batch
size the model allows, and the precision (extract/core/precision.py).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from extract.core.errors import UsageError, writing
from extract.core.files import write_atomically
from extract.core.precision import Precision
from img_model.checkpoint import read_checkpoint
from img_model.data.audio_perturbation import AudioPerturbation
from img_model.data.config import data_overrides
from img_model.data.dataset import DataSources
from img_model.evaluate.breakdowns import RATIO_BINS
from img_model.evaluate.evaluator import EvalReport, Evaluator, check_inputs
from img_model.evaluate.health import training_warnings
from img_model.evaluate.robustness import perturbation_line, perturbation_summary
from img_model.network.convert import load_into
from img_model.network.metrics import NMS_THRESHOLD
from img_model.network.model import IMG
from img_model.runtime import runtime_device

log = logging.getLogger(f"img_vmr.{__name__}")

CONVERTED_NOTE = "converted from the authors' code, whose checkpoints were selected on the test split (§7.15)"
CHECKPOINT_EXPECTED = (
    "an img_model checkpoint: RUN/best.pt or RUN/last.pt (img-train), or img-train convert-official's OUT.pt"
)


@dataclass(frozen=True)
class EvaluationRequest:
    """img-eval's options (their help says what each does); `data` holds the data options given (DataConfig
    fields), over the checkpoint's."""

    checkpoint: Path
    splits: tuple[str, ...] = ("test",)
    data: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None  # None: the run's evaluation batch size
    slot_noise: str = "off"  # off | always
    seed: int = 0
    drop_audio: bool = False
    device: str = "auto"
    precision: str | None = None  # None: the run's
    workers: int = 0
    threads: int = 0
    nms_threshold: float = NMS_THRESHOLD  # R5-NMS and the mAPs: NMS suppresses IoU above this
    audio_perturbation: AudioPerturbation | None = None  # noisy / missing audio on a seeded share (Figure 4)
    ratio_bins: int = RATIO_BINS  # equal-count moment-to-video ratio bins of the breakdown
    audio_weight: float | None = None  # fuse with this audio weight (Table 17: 0); None: the model's own


@dataclass
class Evaluation:
    reports: list[EvalReport]  # one per split, in the order asked
    rows: list[dict[str, Any]]  # every query's prediction (img-eval --predictions), split after split

    @property
    def warnings(self) -> list[str]:
        """The splits' warning lines (the run's and img-eval's own), each once: the top of the report."""
        return list(dict.fromkeys(warning for report in self.reports for warning in report.warnings))


def evaluation_label(evaluation: Evaluation, folder: Path) -> str:
    """How the report names an evaluation: its checkpoint relative to the report's folder, and how the audio was
    read when it was not as recorded."""
    context = evaluation.reports[0].context
    label = _relative(context["checkpoint"], folder)
    if context["drop_audio"]:
        label += ", audio dropped"
    if context.get("audio_weight") is not None:
        label += f", audio weight {context['audio_weight']:g}"
    return label


def _relative(file: str | Path, folder: Path) -> str:
    """A file that exists as a path relative to `folder` (no folder of this machine shown), else as given."""
    return os.path.relpath(Path(file).absolute(), folder.absolute()) if Path(file).is_file() else str(file)


def evaluate_checkpoint(request: EvaluationRequest) -> Evaluation:
    """The report of each split, and the prediction rows of all of them."""
    checkpoint = read_checkpoint(request.checkpoint, expected=CHECKPOINT_EXPECTED)
    recorded = checkpoint.recorded_data
    data_config = replace(recorded, **data_overrides(**request.data), missing_audio="zeros")
    sources = DataSources(data_config)
    notes = check_inputs(checkpoint, sources)
    if data_config.align != recorded.align:
        notes.append(f"--align {data_config.align}: the checkpoint was trained with --align {recorded.align}")
    for note in notes:
        log.warning("%s", note)
    if checkpoint.source == "convert-official":  # recorded; the table's note says it
        notes.append(CONVERTED_NOTE)
    config = replace(checkpoint.config, slot_noise="always" if request.slot_noise == "always" else "never")
    batch_size = request.batch_size or int(checkpoint.recorded("train", "eval_batch_size", 16))
    config.check_batch_size(batch_size, "--batch-size")
    model = IMG(config)
    load_into(model, checkpoint.state_dict)
    if request.audio_weight is not None:
        try:
            model.force_audio_weight(request.audio_weight)
        except ValueError as error:
            raise UsageError(f"--audio-weight {request.audio_weight:g}: {error}") from None
    device = runtime_device(request.device, request.threads)
    precision = Precision.resolve(request.precision, device, checkpoint.recorded("runtime", "precision"))
    model.to(device).eval()
    chosen = sources.evaluation_splits(request.splits, checkpoint.held_out)
    evaluator = Evaluator(
        device, precision, batch_size, request.workers, request.seed, nms_threshold=request.nms_threshold
    )
    selected_on = (checkpoint.training or {}).get("data", {})
    evaluation = Evaluation([], [])
    for split, records in chosen.items():
        dataset = sources.dataset(
            records,
            split,
            "eval",
            config.max_pos_len,
            drop_audio=request.drop_audio,
            audio_perturbation=request.audio_perturbation,
        )
        log.info("%s", dataset.coverage.summary())
        split_notes = list(notes)
        if selected_on.get("select_split") == split and selected_on["select_qids_sha256"] != dataset.qids_sha256():
            split_notes.append(
                f"the {split} queries read now are not those the run selected on (other stores or "
                "annotations): these numbers are of another split"
            )
            log.warning("%s", split_notes[-1])
        predictions = evaluator.predict(model, dataset)
        evaluation.reports.append(
            EvalReport.from_predictions(
                split,
                predictions,
                importance_predicted=config.predicts_importance,
                audio_perturbation=perturbation_summary(dataset, predictions),
                ratio_bin_count=request.ratio_bins,
                checkpoint=str(request.checkpoint),
                checkpoint_source=checkpoint.source,
                select_on=checkpoint.select_on,
                dataset=data_config.dataset,
                slot_noise=request.slot_noise,
                seed=request.seed,
                drop_audio=request.drop_audio,
                audio_weight=request.audio_weight,
                batch_size=batch_size,
                precision=precision.name,
                device=str(device),
                align=data_config.align,
                coverage=dataset.coverage.as_dict(),
                notes=split_notes,
                nms_threshold=request.nms_threshold,
            )
        )
        evaluation.reports[-1].warnings[:0] = training_warnings(checkpoint.training)  # the run's, then this split's
        evaluation.rows += [prediction.as_json() for prediction in predictions]
    return evaluation


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    """img-eval --predictions: one JSON object per query; all the rows or nothing (a temporary name, renamed), so
    a full disk leaves no half file (OutputWriteError)."""
    with writing(f"--predictions {path}", path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))
    log.info("wrote %d predictions to %s", len(rows), path)


def write_evaluation_report(
    path: Path,
    evaluation: Evaluation,
    videos: Path | None,
    title: str | None = None,
    compared: Evaluation | None = None,
) -> None:
    """img-eval --report: the HTML report of every split's queries (img_model/evaluate/report.py); `compared`
    puts a second evaluation of the same queries beside this one."""
    from img_model.evaluate.report import Compared, write_report

    reports, rows = evaluation.reports, evaluation.rows
    first = reports[0].context
    context = {key: first[key] for key in ("checkpoint", "dataset", "slot_noise", "select_on", "notes")}
    for key in ("checkpoint", "dataset"):  # files named relative to the report, as its video links are
        context[key] = _relative(context[key], path.parent)
    if first["drop_audio"]:
        context["notes"] = [*context["notes"], "audio dropped (--drop-audio)"]
    if first.get("audio_perturbation"):
        context["notes"] = [*context["notes"], perturbation_line(first["audio_perturbation"])]
    context["ratio_bin_count"] = first.get("ratio_bin_count", RATIO_BINS)
    context["label"] = evaluation_label(evaluation, path.parent)
    if first.get("audio_weight") is not None:
        context["notes"] = [*context["notes"], f"audio weight forced to {first['audio_weight']:g} (--audio-weight)"]
    if title is None:
        title = (
            f"{Path(first['dataset']).name}: {', '.join(r.split for r in reports)} ({Path(first['checkpoint']).name})"
        )
    other = None if compared is None else Compared(evaluation_label(compared, path.parent), compared.rows)
    with writing(f"--report {path}", path.parent):
        write_report(path, rows, title, context, videos, evaluation.warnings, other)
    log.info("wrote the report of %d queries to %s", len(rows), path)


def write_evaluation_csv(path: Path, evaluation: Evaluation, compared: Evaluation | None = None) -> None:
    """img-eval --csv: the report's per-query table (its CSV link's), the compared fused answer too."""
    from img_model.evaluate.report import Compared, report_csv, report_data

    other = None if compared is None else Compared(evaluation_label(compared, path.parent), compared.rows)
    data = report_data(evaluation.rows, "", compared=other)
    with writing(f"--csv {path}", path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, report_csv(data))
    log.info("wrote %d rows to %s", len(evaluation.rows), path)
