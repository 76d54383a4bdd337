"""img-eval: metrics of a checkpoint on a dataset split, for the fused, visual-only and audio-only branches.

The flags map onto img_model/evaluate/evaluation.py's EvaluationRequest; every failure is one line on stderr.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from extract.core.console import EXIT_FAILED, OneLineCommand, fail, format_probability, setup_logging
from extract.core.errors import ImgVmrError, OutputWriteError
from extract.core.options import BoundedNumber
from img_model.cli.options import data_options, dataset_table, runtime_options, write_failed
from img_model.data.audio_perturbation import MAX_NOISE_SEED, MAX_NOISE_STD, AudioPerturbation
from img_model.evaluate.breakdowns import MAX_RATIO_BINS, RATIO_BINS
from img_model.network.metrics import NMS_THRESHOLD
from img_model.train.config import MAX_BATCH, MAX_SEED

log = logging.getLogger(f"img_vmr.{__name__}")
PROGRAM = "img-eval"


@click.command(
    PROGRAM,
    cls=OneLineCommand,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="\b\nDatasets:\n" + dataset_table() + "\n\n\b\nExit status: 0 evaluated, 1 internal error, "
    "2 usage error or inputs that do not fit the checkpoint, 3 --predictions or --report could not be written (a full "
    "disk; the metrics are printed first).",
)
@click.argument(
    "checkpoint_path", metavar="CHECKPOINT", required=False, type=click.Path(path_type=Path, dir_okay=False)
)
@data_options(required=False)
@click.option(
    "--split",
    "splits",
    multiple=True,
    help="Split to evaluate (default test; repeat it for several, each with its table); train-val is the run's "
    "held-out training videos (re-carved from its seed).",
)
@click.option(
    "--batch-size", type=click.IntRange(1, MAX_BATCH), default=None, help="Evaluation batch size (the run's, 16)."
)
@click.option(
    "--slot-noise",
    type=click.Choice(["off", "always"]),
    default="off",
    show_default=True,
    help="off: initial slots = mu, deterministic; always: the authors' random slots (§7.2), drawn from --seed.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=0,
    show_default=True,
    help="Seed of the slot noise (with --slot-noise always).",
)
@click.option(
    "--audio-weight",
    type=BoundedNumber(0.0, 1.0),
    default=None,
    help="Fuse with this audio weight instead of the model's own (its predicted importance by default); 0 is the "
    "paper's Table 17 (AIP forced to p = 0). Recorded in the report.",
)
@click.option("--drop-audio", is_flag=True, help="Evaluate with every audio track replaced by zeros (has_audio false).")
@click.option(
    "--nms-threshold",
    type=BoundedNumber(0.0, 1.0),
    default=NMS_THRESHOLD,
    show_default=True,
    help="R5-NMS and mAP: greedy NMS over all candidate spans suppresses those whose IoU with a kept span is above "
    "this (MMN's default; 2D-TAN's configs use 0.4-0.5); 1 suppresses nothing.",
)
@click.option(
    "--audio-noise-fraction",
    type=BoundedNumber(0.0, 1.0),
    default=0.0,
    help="Add Gaussian noise (--audio-noise-std) to the audio features of this share of the queries, chosen by "
    "--noise-seed and the query ids alone (the same queries in every run and for every checkpoint; Figure 4).",
)
@click.option(
    "--audio-noise-std",
    type=BoundedNumber(0.0, MAX_NOISE_STD),
    default=1.0,
    show_default=True,
    help="Standard deviation of that noise, in the feature's units.",
)
@click.option(
    "--audio-missing-fraction",
    type=BoundedNumber(0.0, 1.0),
    default=0.0,
    help="Read the audio of this share of the queries as missing (zeros, has_audio false); 1 is --drop-audio.",
)
@click.option(
    "--noise-seed",
    type=click.IntRange(0, MAX_NOISE_SEED),
    default=0,
    show_default=True,
    help="Seed of which queries get noisy / missing audio and of the noise values.",
)
@click.option(
    "--ratio-bins",
    type=click.IntRange(1, MAX_RATIO_BINS),
    default=RATIO_BINS,
    show_default=True,
    help="Equal-count bins of the moment-to-video ratio in the breakdown (Figure 5).",
)
@click.option(
    "--sweep",
    "sweep_text",
    default=None,
    metavar="KEY=V1,V2,...",
    help="Evaluate at every value of one setting: audio-noise-fraction, audio-missing-fraction or audio-noise-std "
    "(the other settings as given); writes a table and a plot to --sweep-out (Figure 4).",
)
@click.option(
    "--compare",
    "compare",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Another checkpoint evaluated the same way, side by side: with --sweep in its table (repeatable; e.g. IMG "
    "w/o AIP); else one, in a second column of --report and --csv (metrics and every query's fused answer).",
)
@click.option(
    "--compare-drop-audio",
    is_flag=True,
    help="With --report or --csv: the compared column is read with every audio track replaced by zeros; without "
    "--compare it is CHECKPOINT itself (with and without audio in one command).",
)
@click.option(
    "--sweep-out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="With --sweep: folder of sweep.md, sweep.csv, sweep.json, sweep.png, sweep.svg (default sweep-KEY).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@click.option(
    "--predictions",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write per-query predictions (JSONL: each branch's top spans with and without NMS, scores, IoU, saliency "
    "score per step; audio importance).",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write a self-contained HTML report: metrics, IoU histogram, R1 per threshold, per audio-importance bin and "
    "per moment length, every query on its timeline (sortable; its P(start)/P(end)) with filters (wrong answers, "
    "audio-decided, split).",
)
@click.option(
    "--videos",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="With --report: the folder of the videos (as img-extract scanned it); rows get a player (files linked).",
)
@click.option(
    "--export-qvhighlights",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the fused predictions in the QVHighlights / Moment-DETR layout (JSONL: qid, query, vid, "
    "pred_relevant_windows [[start, end, score], ...] best first, pred_saliency_scores per 2-s clip) for their "
    "standalone evaluation or lighthouse's.",
)
@click.option(
    "--score-qvhighlights",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Instead of a CHECKPOINT: score a predictions file in that layout (another model's, or an export) against "
    "--dataset's annotations (--split, --features for durations the annotations leave out) with these metrics.",
)
@click.option("--title", default=None, help="With --report: the page's title (default: dataset, splits, checkpoint).")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the report's per-query table as CSV (spans and IoU of each branch, audio importance; the report's "
    "CSV link gives the same table).",
)
@runtime_options(workers=0, precision="the checkpoint's run's, fp32 for converted checkpoints")
def main(
    checkpoint_path: Path | None,
    splits: tuple[str, ...],
    batch_size: int | None,
    slot_noise: str,
    seed: int,
    audio_weight: float | None,
    drop_audio: bool,
    nms_threshold: float,
    audio_noise_fraction: float,
    audio_noise_std: float,
    audio_missing_fraction: float,
    noise_seed: int,
    ratio_bins: int,
    sweep_text: str | None,
    compare: tuple[Path, ...],
    compare_drop_audio: bool,
    sweep_out: Path | None,
    as_json: bool,
    predictions: Path | None,
    report: Path | None,
    videos: Path | None,
    export_qvhighlights: Path | None,
    score_qvhighlights: Path | None,
    title: str | None,
    csv_path: Path | None,
    device: str | None,
    precision: str | None,
    workers: int | None,
    threads: int | None,
    no_progress: bool,
    verbose: bool,
    **data: Any,
) -> None:
    """Evaluate CHECKPOINT (RUN/best.pt, or a converted official checkpoint) on a dataset split.

    \b
    Prints, for the fused, visual-only and audio-only branches, R1@{0.3,0.5,0.7} and mIoU (the paper's),
    R5-NMS@{0.3,0.5,0.7} (top 5 after NMS: 2D-TAN's and MMN's R@5), mAP@0.5, mAP@0.75 and mAP@[0.5:0.95]
    (Moment-DETR's), R5-noNMS@{0.3,0.5,0.7} (the 5 most probable distinct spans), and, where the dataset has
    clip-level saliency labels, HL-mAP and HL-HIT@1 (Moment-DETR's highlight detection, >= Very Good). A span
    is right at μ when its IoU >= μ. --json adds the breakdown by predicted audio importance. The data
    options default to those the checkpoint was trained with; inputs made with another recipe than the
    checkpoint's features and text are refused. Two runs give identical numbers.

    \b
    Examples:
      img-eval runs/charades/best.pt
      img-eval runs/charades/best.pt --dataset charades-am --json --predictions am.jsonl
      img-eval runs/charades/best.pt --split test --split train-val --report report.html --videos videos/
      img-eval runs/img/best.pt --compare-drop-audio --report with-without-audio.html --csv answers.csv
      img-eval runs/img/best.pt --compare runs/no-aip/best.pt --report side-by-side.html --title "IMG vs w/o AIP"
      img-eval runs/charades/best.pt --audio-noise-fraction 0.4 --audio-noise-std 1 --noise-seed 0
      img-eval runs/img/best.pt --compare runs/no-aip/best.pt \\
               --sweep audio-noise-fraction=0,0.2,0.4,0.6,0.8,1 --sweep-out figure4/
      img-eval converted.pt --dataset charades-sta --features feats.h5 --visual i3d-charades-vslnet \\
               --audio panns --text text.h5 --slot-noise always --seed 1
      img-eval runs/charades/best.pt --export-qvhighlights preds.jsonl
      img-eval --score-qvhighlights their_preds.jsonl --dataset queries.jsonl --split val
    """
    setup_logging(PROGRAM, verbose)
    if score_qvhighlights is not None:
        if checkpoint_path is not None:
            fail("--score-qvhighlights scores a predictions file, not a checkpoint: leave out CHECKPOINT")
        if predictions or report or export_qvhighlights or sweep_text or csv_path or compare or compare_drop_audio:
            fail(
                "--score-qvhighlights prints metrics only: leave out --predictions, --report, --csv, --export-*, "
                "--sweep, --compare*"
            )
        _score_qvhighlights(score_qvhighlights, splits or ("test",), data, as_json)
        return
    if checkpoint_path is None:
        fail("give the CHECKPOINT to evaluate (or --score-qvhighlights FILE --dataset ANNOTATIONS)")
    if (videos is not None or title is not None) and report is None:
        fail(f"{'--videos' if videos is not None else '--title'} goes into the HTML report: add --report report.html")
    if sweep_out and sweep_text is None:
        fail("--sweep-out goes with --sweep KEY=V1,V2,...")
    if sweep_text is None and (compare or compare_drop_audio):
        if report is None and csv_path is None:
            fail("--compare without --sweep puts a second column in the report: add --report report.html or --csv")
        if len(compare) > 1:
            fail("--compare without --sweep takes one checkpoint (the report has two columns); --sweep takes several")
    if sweep_text is not None and compare_drop_audio:
        fail("--compare-drop-audio goes with --report or --csv, not --sweep (sweep --audio-missing-fraction instead)")
    # after the usage checks: a usage error answers at once, without loading torch (7 s on a busy machine)
    from img_model.evaluate.evaluation import (
        EvaluationRequest,
        evaluate_checkpoint,
        evaluation_label,
        write_evaluation_csv,
        write_evaluation_report,
        write_predictions,
    )
    from img_model.evaluate.qvhighlights import write_qvhighlights
    from img_model.network.convert import CheckpointLayoutError

    request = EvaluationRequest(
        checkpoint_path,
        splits or ("test",),
        data,
        batch_size,
        slot_noise,
        seed,
        drop_audio,
        device or "auto",
        precision,
        workers or 0,
        threads or 0,
        nms_threshold=nms_threshold,
        audio_perturbation=AudioPerturbation(audio_noise_fraction, audio_noise_std, audio_missing_fraction, noise_seed),
        ratio_bins=ratio_bins,
        audio_weight=audio_weight,
    )
    if sweep_text is not None:
        _sweep(request, sweep_text, list(compare), sweep_out, as_json)
        return
    compared_request = (
        replace(
            request, checkpoint=compare[0] if compare else checkpoint_path, drop_audio=drop_audio or compare_drop_audio
        )
        if compare or compare_drop_audio
        else None
    )
    try:
        evaluation = evaluate_checkpoint(request)
        compared = None if compared_request is None else evaluate_checkpoint(compared_request)
    except (CheckpointLayoutError, ImgVmrError) as error:
        fail(str(error))
        return
    except Exception as error:
        log.debug("internal error", exc_info=True)
        fail(f"internal error: {type(error).__name__}: {error} (run with -v for details)", EXIT_FAILED)
        return
    reports = evaluation.reports
    if as_json:  # the metrics first: a file that cannot be written (a full disk) loses none of them
        payload = reports[0].as_json() if len(reports) == 1 else {"splits": [r.as_json() for r in reports]}
        if compared is not None:
            payload["compared"] = {"splits": [r.as_json() for r in compared.reports]}
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo("\n\n".join(_tables(report) for report in reports))
        if compared is not None:
            click.echo(
                f"\n\ncompared: {evaluation_label(compared, Path.cwd())}\n\n"
                + "\n\n".join(_tables(r) for r in compared.reports)
            )
    try:
        if predictions is not None:
            write_predictions(predictions, evaluation.rows)
        if export_qvhighlights is not None:
            write_qvhighlights(export_qvhighlights, evaluation.rows)
        if report is not None:
            write_evaluation_report(report, evaluation, videos, title, compared)
        if csv_path is not None:
            write_evaluation_csv(csv_path, evaluation, compared)
    except OutputWriteError as error:
        log.debug("error", exc_info=True)
        write_failed(PROGRAM, error, "run img-eval again (the metrics are printed above)")
    except ImgVmrError as error:
        fail(str(error))


def _sweep(request: Any, sweep_text: str, compare: list[Path], out: Path | None, as_json: bool) -> None:
    from img_model.evaluate.sweep import parse_sweep, run_sweep, sweep_markdown, write_sweep
    from img_model.network.convert import CheckpointLayoutError

    try:
        sweep = parse_sweep(sweep_text)
        rows = run_sweep(request, compare, sweep)
    except (CheckpointLayoutError, ImgVmrError) as error:
        fail(str(error))
        return
    except Exception as error:
        log.debug("internal error", exc_info=True)
        fail(f"internal error: {type(error).__name__}: {error} (run with -v for details)", EXIT_FAILED)
        return
    click.echo(json.dumps({"key": sweep.key, "rows": rows}, indent=2) if as_json else sweep_markdown(sweep, rows))
    folder = out or Path(f"sweep-{sweep.key}")
    try:
        written = write_sweep(folder, sweep, rows)
    except OutputWriteError as error:
        log.debug("error", exc_info=True)
        write_failed(PROGRAM, error, "run img-eval --sweep again (the table is printed above)")
    log.info("wrote %s", ", ".join(str(path) for path in written))


def _score_qvhighlights(path: Path, splits: tuple[str, ...], data: dict[str, Any], as_json: bool) -> None:
    from extract.store import video_durations
    from img_model.data.dataset import dataset_splits
    from img_model.data.feature_stores import FeatureStores
    from img_model.evaluate.qvhighlights import score_qvhighlights

    if not data.get("dataset"):
        fail("--score-qvhighlights needs the annotations to score against: --dataset NAME or queries.jsonl")
    features = data.get("features") or ()

    def durations() -> dict[str, float]:  # of the videos whose annotations give none (a custom JSONL)
        return video_durations(FeatureStores(features)) if features else {}

    try:
        annotations = dataset_splits(data["dataset"], data.get("data_dir"), durations)
        reports = score_qvhighlights(path, annotations, splits, dataset=data["dataset"])
    except ImgVmrError as error:
        fail(str(error))
        return
    if as_json:
        payload = reports[0].as_json() if len(reports) == 1 else {"splits": [r.as_json() for r in reports]}
        click.echo(json.dumps(payload, indent=2))
        return
    note = (
        f"{path.name} against {data['dataset']}: the fused row is the file's predictions; R1 and mIoU from each "
        "query's first window, R5-NMS and mAP from its windows by score (the first 10), HL from "
        "pred_saliency_scores"
    )
    click.echo("\n\n".join(f"{report.table()}\n{note}" for report in reports))


def _tables(report: Any) -> str:
    from img_model.evaluate.evaluation import CONVERTED_NOTE
    from img_model.evaluate.robustness import perturbation_line

    context = report.context
    lines = [report.table()]
    if context.get("checkpoint_source") == "convert-official":
        lines.append(f"note: {CONVERTED_NOTE}")
    elif context.get("select_on") == "test":
        lines.append("note: this checkpoint was selected on the test split (the paper's protocol, §7.15)")
    lines.append(
        (
            "mean audio importance n/a (none predicted)"
            if math.isnan(report.mean_importance)
            else f"mean audio importance {format_probability(report.mean_importance)}"
        )
        + f"; slot noise {context['slot_noise']}"
        + (f" (seed {context['seed']})" if context["slot_noise"] == "always" else "")
        + (", audio dropped" if context["drop_audio"] else "")
        + (f", audio weight forced to {context['audio_weight']:g}" if context.get("audio_weight") is not None else "")
    )
    if context.get("audio_perturbation"):
        lines.append(perturbation_line(context["audio_perturbation"]))
    lines += [f"warning: {warning}" for warning in report.warnings]
    lines += ["", report.breakdown_tables()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
