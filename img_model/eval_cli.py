"""img-eval: metrics of a checkpoint on a dataset split, for the fused, visual-only and audio-only branches.

The CLI maps flags onto the evaluation and nothing else reads flags; every failure is one line on stderr.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from extract.errors import ImgVmrError, OutputWriteError, UsageError, writing
from extract.store import save_atomically
from img_model.cli_common import (
    EXIT_FAILED,
    data_options,
    data_overrides,
    dataset_table,
    fail,
    runtime_options,
    setup_logging,
    write_failed,
)
from img_model.convert import CheckpointLayoutError, load_into
from img_model.train_config import MAX_BATCH, MAX_SEED

log = logging.getLogger("img_vmr.train")
PROGRAM = "img-eval"
CONVERTED_NOTE = "converted from the authors' code, whose checkpoints were selected on the test split (§7.15)"
CHECKPOINT_EXPECTED = (
    "an img_model checkpoint: RUN/best.pt or RUN/last.pt (img-train), or img-train convert-official's OUT.pt"
)


@click.command(
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
@runtime_options(workers=0, precision="the run's (fp32 for converted checkpoints; fp16 runs evaluate in fp32 on a CPU)")
def main(
    checkpoint_path: Path,
    splits: tuple[str, ...],
    batch_size: int | None,
    slot_noise: str,
    seed: int,
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
    setup_logging(PROGRAM, verbose)
    if videos is not None and report is None:
        fail(PROGRAM, "--videos links the videos into the HTML report: add --report report.html")
    try:
        reports, rows = _evaluate(
            checkpoint_path, splits or ("test",), batch_size, slot_noise, seed, drop_audio, device, precision,
            workers, threads, data,
        )  # fmt: skip
    except (CheckpointLayoutError, ImgVmrError) as error:
        fail(PROGRAM, str(error))
        return
    except Exception as error:
        log.debug("internal error", exc_info=True)
        fail(PROGRAM, f"internal error: {type(error).__name__}: {error} (run with -v for details)", EXIT_FAILED)
        return
    if as_json:  # the metrics first: a file that cannot be written (a full disk) loses none of them
        payload = reports[0].as_json() if len(reports) == 1 else {"splits": [r.as_json() for r in reports]}
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo("\n\n".join(_tables(report) for report in reports))
    try:
        if predictions is not None:
            _write_jsonl(predictions, rows)
        if report is not None:
            _write_report(report, reports, rows, videos)
    except OutputWriteError as error:
        log.debug("error", exc_info=True)
        write_failed(PROGRAM, error, "run img-eval again (the metrics are printed above)")


def _evaluate(
    checkpoint_path: Path,
    splits: tuple[str, ...],
    batch_size: int | None,
    slot_noise: str,
    seed: int,
    drop_audio: bool,
    device_spec: str | None,
    precision: str | None,
    workers: int | None,
    threads: int | None,
    data: dict[str, Any],
) -> tuple[list[Any], list[dict[str, Any]]]:
    """The report of each split, and the prediction rows of all of them (in split order)."""
    from img_model.checkpoint import read_checkpoint
    from img_model.dataset import HELD_OUT_SPLIT, DataConfig, DataSources
    from img_model.evaluator import EvalReport, Evaluator, check_inputs
    from img_model.model import IMG
    from img_model.runtime import resolve_device
    from img_model.train_config import check_batch_size, from_dict

    checkpoint = read_checkpoint(checkpoint_path, expected=CHECKPOINT_EXPECTED)
    run = from_dict(checkpoint.run) if checkpoint.run else None
    recorded = run.data if run is not None else DataConfig()  # converted: the authors' alignment rule
    data_config = replace(recorded, **data_overrides(**data), missing_audio="zeros")
    sources = DataSources(data_config)
    notes = check_inputs(checkpoint, sources)
    if data_config.align != recorded.align:
        notes.append(f"--align {data_config.align}: the checkpoint was trained with --align {recorded.align}")
    for note in notes:
        log.warning("%s", note)
    if checkpoint.source == "convert-official":  # recorded; the table's note says it
        notes.append(CONVERTED_NOTE)
    config = replace(checkpoint.config, slot_noise="always" if slot_noise == "always" else "never")
    batch_size = batch_size or (run.train.eval_batch_size if run else 16)
    check_batch_size(config, batch_size, "--batch-size")
    model = IMG(config)
    load_into(model, checkpoint.state_dict)
    device = resolve_device(device_spec or "auto", precision, threads or 0)
    if precision is None:  # the run's, where this device can run it
        precision = run.runtime.precision if run else "fp32"
        if precision == "fp16" and device.type != "cuda":
            log.info("the checkpoint was trained in fp16, which needs a CUDA GPU; evaluating in fp32 on %s", device)
            precision = "fp32"
        log.info("precision: %s", precision)
    model.to(device).eval()

    available = sources.splits()
    chosen = {}
    for split in dict.fromkeys(splits):  # every name is checked before anything is computed
        if split == HELD_OUT_SPLIT and run is not None and "train" in available:
            name, _, chosen[split] = sources.validation(available, run.train.val_fraction, run.train.val_seed)
            if name != HELD_OUT_SPLIT:
                raise UsageError(f"--split {split}: this run trained on all of train and selected on the dataset's "
                                 f"own {name} split; use --split {name}")  # fmt: skip
        elif split in available:
            chosen[split] = available[split]
        elif split == HELD_OUT_SPLIT and split not in available:
            raise UsageError(f"--split {split}: the held-out training videos of a run; {checkpoint_path} was not "
                             "trained by img-train (or its dataset has no train split)")  # fmt: skip
        else:
            named = ", ".join(
                [*sorted(available), *([HELD_OUT_SPLIT] if run is not None and "train" in available else [])]
            )
            raise UsageError(f"--split {split}: {data_config.dataset} has the splits {named}")
    workers = workers if workers is not None else 0
    evaluator = Evaluator(device, precision, batch_size, workers, seed)
    reports, rows = [], []
    for split, records in chosen.items():
        dataset = sources.dataset(records, split, "eval", config.max_pos_len, drop_audio=drop_audio)
        log.info("%s", dataset.coverage.summary())
        split_notes = list(notes)
        recorded_data = (checkpoint.training or {}).get("data", {})
        if recorded_data.get("select_split") == split and recorded_data["select_qids_sha256"] != dataset.qids_sha256():
            split_notes.append(f"the {split} queries read now are not those the run selected on (other stores or "
                               "annotations): these numbers are of another split")  # fmt: skip
            log.warning("%s", split_notes[-1])
        predictions = evaluator.predict(model, dataset)
        reports.append(
            EvalReport.from_predictions(
                split,
                predictions,
                checkpoint=str(checkpoint_path),
                checkpoint_source=checkpoint.source,
                select_on=checkpoint.select_on,
                dataset=data_config.dataset,
                slot_noise=slot_noise,
                seed=seed,
                drop_audio=drop_audio,
                batch_size=batch_size,
                precision=precision,
                device=str(device),
                align=data_config.align,
                coverage=dataset.coverage.as_dict(),
                notes=split_notes,
            )
        )
        rows += [prediction.as_json() for prediction in predictions]
    return reports, rows


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
    )
    return "\n".join(lines)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """All the rows or nothing (a temporary name, renamed): a full disk leaves no half file."""
    with writing(f"--predictions {path}", path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(row) + "\n" for row in rows)
        save_atomically(path, memoryview(text.encode()), path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    log.info("wrote %d predictions to %s", len(rows), path)


def _write_report(path: Path, reports: list[Any], rows: list[dict[str, Any]], videos: Path | None) -> None:
    from img_model.report import write_report

    first = reports[0].context
    context = {key: first[key] for key in ("checkpoint", "dataset", "slot_noise", "select_on", "notes")}
    for key in ("checkpoint", "dataset"):  # files named relative to the report, as its video links are
        if Path(context[key]).is_file():
            context[key] = os.path.relpath(Path(context[key]).absolute(), path.absolute().parent)
    if first["drop_audio"]:
        context["notes"] = [*context["notes"], "audio dropped (--drop-audio)"]
    title = f"{Path(first['dataset']).name}: {', '.join(r.split for r in reports)} ({Path(first['checkpoint']).name})"
    with writing(f"--report {path}", path.parent):
        write_report(path, rows, title, context, videos)
    log.info("wrote the report of %d queries to %s", len(rows), path)


if __name__ == "__main__":
    main()
