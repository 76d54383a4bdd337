"""img-eval: metrics of a checkpoint on a dataset split, for the fused, visual-only and audio-only branches.

The flags map onto img_model/evaluate/evaluation.py's EvaluationRequest; every failure is one line on stderr.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from extract.core.console import EXIT_FAILED, OneLineCommand, fail, setup_logging
from extract.core.errors import ImgVmrError, OutputWriteError
from img_model.cli.options import data_options, dataset_table, runtime_options, write_failed
from img_model.evaluate.evaluation import CONVERTED_NOTE
from img_model.network.convert import CheckpointLayoutError
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
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(path_type=Path, dir_okay=False))
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
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Fuse with this audio weight instead of the model's own (its predicted importance by default); 0 is the "
    "paper's Table 17 (AIP forced to p = 0). Recorded in the report.",
)
@click.option("--drop-audio", is_flag=True, help="Evaluate with every audio track replaced by zeros (has_audio false).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@click.option(
    "--predictions",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write per-query predictions (JSONL: each branch's top spans, scores, IoU, audio importance).",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write a self-contained HTML report: metrics, IoU histogram, R1 per threshold, every query on its "
    "timeline with filters (wrong answers, audio-decided, split).",
)
@click.option(
    "--videos",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="With --report: the folder of the videos (as img-extract scanned it); rows get a player (files linked).",
)
@runtime_options(workers=0, precision="the checkpoint's run's, fp32 for converted checkpoints")
def main(
    checkpoint_path: Path,
    splits: tuple[str, ...],
    batch_size: int | None,
    slot_noise: str,
    seed: int,
    audio_weight: float | None,
    drop_audio: bool,
    as_json: bool,
    predictions: Path | None,
    report: Path | None,
    videos: Path | None,
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
    Prints R1@{0.3,0.5,0.7}, mIoU and R5@{0.3,0.5,0.7} (from the top-5 distinct spans) of the fused,
    visual-only and audio-only branches; --json adds the breakdown by predicted audio importance. The data
    options default to those the checkpoint was trained with; inputs made with another recipe than the
    checkpoint's features and text are refused. Two runs give identical numbers.

    \b
    Examples:
      img-eval runs/charades/best.pt
      img-eval runs/charades/best.pt --dataset charades-am --json --predictions am.jsonl
      img-eval runs/charades/best.pt --split test --split train-val --report report.html --videos videos/
      img-eval converted.pt --dataset charades-sta --features feats.h5 --visual i3d-charades-vslnet \\
               --audio panns --text text.h5 --slot-noise always --seed 1
    """
    from img_model.evaluate.evaluation import (
        EvaluationRequest,
        evaluate_checkpoint,
        write_evaluation_report,
        write_predictions,
    )

    setup_logging(PROGRAM, verbose)
    if videos is not None and report is None:
        fail("--videos links the videos into the HTML report: add --report report.html")
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
        audio_weight=audio_weight,
    )
    try:
        evaluation = evaluate_checkpoint(request)
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
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo("\n\n".join(_tables(report) for report in reports))
    try:
        if predictions is not None:
            write_predictions(predictions, evaluation.rows)
        if report is not None:
            write_evaluation_report(report, evaluation, videos)
    except OutputWriteError as error:
        log.debug("error", exc_info=True)
        write_failed(PROGRAM, error, "run img-eval again (the metrics are printed above)")
    except ImgVmrError as error:
        fail(str(error))


def _tables(report: Any) -> str:
    context = report.context
    lines = [report.table()]
    if context.get("checkpoint_source") == "convert-official":
        lines.append(f"note: {CONVERTED_NOTE}")
    elif context.get("select_on") == "test":
        lines.append("note: this checkpoint was selected on the test split (the paper's protocol, §7.15)")
    lines.append(
        f"mean audio importance {report.mean_importance:.3f}; slot noise {context['slot_noise']}"
        + (f" (seed {context['seed']})" if context["slot_noise"] == "always" else "")
        + (", audio dropped" if context["drop_audio"] else "")
        + (f", audio weight forced to {context['audio_weight']:g}" if context.get("audio_weight") is not None else "")
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
