"""img-pipeline: one recipe from raw videos (or released features) to evaluated IMG models.

The CLI maps flags onto a Recipe and PipelineOptions and nothing else reads flags; every failure is one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from extract.core.console import EXIT_INTERRUPTED, OneLineCommand, fail, setup_logging
from extract.core.errors import ImgVmrError
from extract.core.options import precision_option
from pipelines.recipes import RECIPES

PROGRAM = "img-pipeline"


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


@click.command(
    PROGRAM,
    cls=OneLineCommand,
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
    "2 usage error, 130 / 143 interrupted.",
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


if __name__ == "__main__":
    main()
