"""img-pipeline: one recipe from raw videos (or released features) to evaluated IMG models.

The CLI maps flags onto a Recipe and PipelineOptions and nothing else reads flags; every failure is one line.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from extract.core.console import EXIT_FAILED, EXIT_INTERRUPTED, OneLineCommand, fail, setup_logging
from extract.core.errors import ImgVmrError, UsageError
from extract.core.options import precision_option
from pipelines.recipes import RECIPES

PROGRAM = "img-pipeline"
MAX_DEVICES = 64


def _recipe_table() -> str:
    lines = []
    for name, recipe in RECIPES.items():
        lines.append(f"  {name:<13} {recipe.description}")
        lines.append(
            f"  {'':<13} ({recipe.visual} + {recipe.audio} + {recipe.text}; evaluated on "
            f"{', '.join(recipe.evaluate_on)})"
        )
    lines.append(f"  {'FILE.jsonl':<13} your queries {{video_id, start, end, query, split}} (train and test splits),")
    lines.append(f"  {'':<13} with --visual / --audio presets (default i3d-charades-vslnet + panns)")
    return "\n".join(lines)


class RecipeOrExperiment(OneLineCommand):
    """`img-pipeline RECIPE ...` runs a recipe; `img-pipeline experiment FILE ...` runs an experiment and
    `img-pipeline tour ...` the tour (each its own --help). The recipe command keeps the whole --help of
    img-pipeline."""

    def main(self, args: Any = None, prog_name: str | None = None, **kwargs: Any) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        if words[:1] == ["experiment"]:
            return experiment.main(words[1:], prog_name=f"{prog_name or PROGRAM} experiment", **kwargs)
        if words[:1] == ["tour"]:
            return tour.main(words[1:], prog_name=f"{prog_name or PROGRAM} tour", **kwargs)
        return super().main(words, prog_name=prog_name, **kwargs)


@click.command(
    PROGRAM,
    cls=RecipeOrExperiment,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    epilog="\b\nRecipes:\n" + _recipe_table() + "\n\n\b\n"
    "Stages (each skipped when its output in WORK is complete, resumed when partial):\n"
    "  manifest   img-extract manifest DATASET --videos DIR          -> WORK/videos.jsonl\n"
    "  extract    img-extract WORK/videos.jsonl --features V,A       -> WORK/feats.h5\n"
    "             (or: img-extract import-img of --released-visual / --released-audio)\n"
    "  text       img-extract text --embed glove:--glove             -> WORK/text.h5\n"
    "  train      img-train (--resume when WORK/run holds a last.pt)  -> WORK/run/\n"
    "  eval       img-eval WORK/run/best.pt --dataset D --json       -> WORK/eval/D.json\n\n\b\n"
    "Exit status: 0 done, 1 a stage failed (its own message is above; re-run the same command to continue),\n"
    "2 usage error, 130 / 143 interrupted.\n\n\b\n"
    "Seeds, sweeps and ablations: img-pipeline experiment EXPERIMENT.toml --out DIR (img-pipeline experiment --help).\n"
    "A first look in a minute, offline and on a CPU: img-pipeline tour --out tour/ (img-pipeline tour --help).",
)
@click.argument("recipe_name", metavar="RECIPE")
@click.option(
    "--work",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for every stage's output (one recipe's inputs per folder; reused to resume).",
)
@click.option(
    "--videos",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder of the dataset's videos (searched recursively; file name = video id).",
)
@click.option(
    "--released-visual",
    type=click.Path(path_type=Path),
    default=None,
    help="Released visual features (folder of .npy) instead of videos (img-extract import-img).",
)
@click.option(
    "--released-audio",
    type=click.Path(path_type=Path),
    default=None,
    help="Released audio features: folder of .npy (PANNs) or VGGish.pickle.",
)
@click.option(
    "--glove",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="GloVe vectors in the glove.840B.300d.txt format (not on PyPI: download glove.840B.300d.zip from "
    "nlp.stanford.edu/projects/glove and unzip it).",
)
@click.option(
    "--glove-cache",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the GloVe index is built (default $IMG_WEIGHTS_DIR/glove-index).",
)
@click.option("--visual", default=None, help="Visual feature preset instead of the recipe's (e.g. clip).")
@click.option("--audio", default=None, help="Audio feature preset instead of the recipe's (e.g. vggish).")
@click.option("--text-embed", default=None, help="Text embedding instead of GloVe: bert[:MODEL] or clip-text[:MODEL].")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="img-train TOML ([model], [objective], [train], [data], [runtime]) over the recipe's.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs (the paper's 100).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Training batch size (16).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Training seed (0).")
@click.option(
    "--select-on",
    type=click.Choice(["val", "test"]),
    default=None,
    help="Select best.pt on held-out training videos (val, default) or on test (the paper).",
)
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N, for every stage.")
@precision_option("fp32 for extraction and training, the run's for evaluation")
@click.option("--threads", type=click.IntRange(min=0), default=None, help="torch CPU threads of img-train / img-eval.")
@click.option(
    "--weights-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Feature model weights for offline use (img-extract --weights-dir).",
)
@click.option("--trust-weights", is_flag=True, help="Accept weights files whose checksum differs (img-extract).")
@click.option("--clip-model", default=None, help="CLIP model id or folder for the clip preset (img-extract).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Annotation files (default $IMG_DATA_DIR or ~/.cache/img-vmr/annotations).",
)
@click.option("--dry-run", is_flag=True, help="Print the stages, whether each would run, and their commands; run none.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def main(recipe_name: str, dry_run: bool, no_progress: bool, **flags: Any) -> None:
    """Run RECIPE end to end in WORK: video manifest, feature extraction, query text, training, evaluation.

    Every stage is one of the project's commands (shown by --dry-run, logged in WORK/pipeline.log) and is
    skipped when its output is complete, so the same command continues a run that stopped anywhere and does
    nothing once everything is done. At the end the test metrics are printed beside the paper's.

    \b
    Examples:
      img-pipeline charades-sta --videos Charades_v1_480/ --glove glove.840B.300d.txt --work work/charades
      img-pipeline charades-am --videos Charades_v1_480/ --glove glove.840B.300d.txt --work work/charades
      img-pipeline activitynet --released-visual anet/i3d_video --released-audio anet/audio/VGGish.pickle \\
                   --glove glove.840B.300d.txt --work work/anet --device cuda
      img-pipeline my_queries.jsonl --videos my_videos/ --visual clip --audio vggish --glove glove.txt \\
                   --work work/mine --epochs 20 --dry-run
    """
    from pipelines.pipeline import StageFailed, build_plan, describe, run_plan, summary

    setup_logging(PROGRAM)
    try:
        recipe, options = _parse(recipe_name, not no_progress, flags)
        plan = build_plan(recipe, options)
        if dry_run:
            click.echo("\n".join(describe(plan)))
            return
        run_plan(plan)
    except StageFailed as failure:
        fail(str(failure), failure.code)
    except ImgVmrError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; re-run the same command to continue", EXIT_INTERRUPTED)
    click.echo(summary(plan))


def _parse(recipe_name: str, progress: bool, flags: dict[str, Any]) -> tuple[Any, Any]:
    from pipelines.pipeline import PipelineOptions
    from pipelines.recipes import get_recipe

    recipe = get_recipe(recipe_name, flags.pop("visual"), flags.pop("audio"), flags.pop("text_embed"))
    train_flags = {name: flags.pop(name) for name in ("epochs", "batch_size", "seed", "select_on")}
    options = PipelineOptions(
        work=flags.pop("work"),
        train_flags={name: value for name, value in train_flags.items() if value is not None},
        progress=progress,
        **flags,
    )
    return recipe, options


@click.command(
    f"{PROGRAM} experiment",
    cls=OneLineCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    epilog="\b\nEXPERIMENT.toml:\n"
    '  recipe = "base.toml"              img-train\'s --config file (relative paths: to it), or [recipe.SECTION]\n'
    "                                    tables inline ([recipe.data] dataset, features, visual, audio, text)\n"
    '  seeds = [0, 1, 2, 3, 4]           or "0-4"\n'
    "  train_fraction = 0.5              optional: a seeded share of the training videos (Table 15)\n"
    "  [grid]                            the product of every key's values; any img-train setting\n"
    '  "objective.distill_temperature" = [0.5, 1, 2, 4]\n'
    '  "model.event_num" = [2, 3, 4]\n'
    '  "train.select_on" = ["val", "test"]   selection protocols side by side (also train.selection_noise,\n'
    "                                        train.refit)\n\n\b\n"
    "DIR:\n"
    "  results.md, results.csv, results.json   mean ± std over seeds per setting, every metric and branch\n"
    "  sweep.png                               each metric against the swept value (a grid of one key)\n"
    "  runs/cNN-SETTING/seed-S/                the img-train run folder, recipe.toml, eval.json, commands.log\n\n\b\n"
    "Exit status: 0 every run finished, 1 some run failed (the others ran; re-run to retry it), 2 usage error,\n"
    "130 / 143 interrupted (re-run the same command: finished runs are skipped, stopped ones resume).",
)
@click.argument("experiment_file", metavar="EXPERIMENT.toml", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder of the runs and the tables (reused to resume).",
)
@click.option(
    "--devices",
    default=None,
    metavar="D1,D2,...",
    help="Run one run per device at a time (e.g. cuda:0,cuda:1); default: one run at a time, on the recipe's "
    "[runtime] device.",
)
@click.option("--dry-run", is_flag=True, help="Print every run, whether it would run, and its next command.")
def experiment(experiment_file: Path, out: Path, devices: str | None, dry_run: bool) -> None:
    """Train and evaluate every setting of a grid over several seeds, and tabulate mean ± std per setting.

    Each setting x seed is one img-train run folder with its img-eval --json report; a finished run is skipped, a
    stopped one resumes (img-train --resume), so the same command continues an experiment and, once everything is
    finished, only writes the tables again.

    \b
    Examples:
      img-pipeline experiment tau_sweep.toml --out experiments/tau
      img-pipeline experiment slots.toml --out experiments/slots --devices cuda:0,cuda:1
    """
    from pipelines.experiment import load_experiment
    from pipelines.experiment_runs import ExperimentInterrupted, plan_runs, run_all
    from pipelines.experiment_table import write_tables

    setup_logging(PROGRAM)
    started = time.perf_counter()
    try:
        slots = _devices(devices)
        plan = load_experiment(experiment_file)
        runs = plan_runs(plan, out)
        if dry_run:
            for run in runs:
                command = run.command(slots[0])
                click.echo(f"{run.name}: {run.state()}" + (f"\n    {command.display()}" if command else ""))
            return
        tally = run_all(runs, slots)
    except ExperimentInterrupted as stopped:
        fail(str(stopped), stopped.code)
    except ImgVmrError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot write in --out {out} ({error.strerror}); choose a writable folder")
    written = write_tables(plan, runs, out)
    elapsed = time.perf_counter() - started
    failed = tally.failed or []
    rate = f", {tally.done / elapsed * 3600:.1f} runs/hour" if tally.done else ""
    click.echo(
        f"{len(runs)} runs: {tally.done} done, {tally.skipped} skipped (finished before), {len(failed)} failed; "
        f"{elapsed:.0f} s{rate}\n" + "\n".join(f"wrote {path}" for path in written)
    )
    if failed:
        fail(f"{len(failed)} runs failed (first: {failed[0]}); re-run the same command to retry them", EXIT_FAILED)


@click.command(
    f"{PROGRAM} tour",
    cls=OneLineCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    epilog="\b\nOUT:\n"
    "  report.html             img-eval's report: every test query on its timeline, per branch\n"
    "  eval.json               img-eval --json (all the metrics); predictions.jsonl: every answer\n"
    "  run/                    the img-train run folder (best.pt, metrics.jsonl, summary.txt, tensorboard/)\n"
    "  data/                   the synthetic feature store, text store and queries; tour.toml: the model\n"
    "  tour.log                the img-train and img-eval commands that ran\n\n\b\n"
    "Exit status: 0 done, 1 a step failed (its message is above; re-run the same command to continue), 2 usage\n"
    "error, 130 / 143 interrupted.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder of the tour: new or empty, or an earlier tour's (finished steps are skipped).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def tour(out: Path, no_progress: bool) -> None:
    """See img-vmr work in under a minute on a CPU, offline: no model download, no GPU, no dataset.

    Writes a synthetic dataset through the real feature and text stores (videos whose queried moment shows only
    in the audio, only in the video frames, or in both), trains a small IMG on it with img-train, evaluates it
    with img-eval, writes the HTML report, and prints per family how often the fused, visual-only and
    audio-only answers are right and how much the model trusts the audio.

    \b
    Example:
      img-pipeline tour --out tour/
    """
    from pipelines.pipeline import StageFailed
    from pipelines.tour import run_and_summarise

    setup_logging(PROGRAM)
    try:
        shown = run_and_summarise(out, not no_progress)
    except StageFailed as failure:
        fail(str(failure), failure.code)
    except ImgVmrError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; re-run the same command to continue", EXIT_INTERRUPTED)
    click.echo(shown)


def _devices(devices: str | None) -> list[str | None]:
    if devices is None:
        return [None]
    names = [name.strip() for name in devices.split(",")]
    valid = all(re.fullmatch(r"cpu|cuda(:\d{1,3})?", name) for name in names)
    if not valid or len(names) > MAX_DEVICES or len(set(names)) != len(names):
        raise UsageError(f"--devices {devices!r}: give 1 to {MAX_DEVICES} distinct devices, e.g. cuda:0,cuda:1")
    return list(names)


if __name__ == "__main__":
    main()
