"""`img-train cost [CHECKPOINT]`: parameters and FLOPs of IMG per module (Table 12), img_model/network/cost.py.

A subcommand of img-train, since it is about the model a recipe or a checkpoint builds (no data is read)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from extract.core.console import fail, setup_logging
from extract.core.errors import ImgVmrError
from img_model.network.config import ACTIVITYNET, CHARADES_CLIP_SF, IMGConfig
from img_model.network.cost import QUERY_WORDS, VIDEO_STEPS, cost_table, model_cost

PRESETS = {"charades": IMGConfig(), "activitynet": ACTIVITYNET, "clip-sf": CHARADES_CLIP_SF}


@click.command("cost", epilog="Exit status: 0 counted, 2 usage error or an unreadable checkpoint.")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="charades",
    show_default=True,
    help="Without CHECKPOINT: the published model to count (Charades-STA I3D + PANNs + GloVe; ActivityNet "
    "I3D + VGGish; Charades CLIP+SlowFast + CLIP text).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A recipe (img-train --config TOML) whose [model] section changes the --preset model (e.g. an ablation).",
)
@click.option(
    "--video-steps",
    type=click.IntRange(1, 8192),
    default=None,
    help=f"Video steps of the counted query (default {VIDEO_STEPS}, at most the model's max_pos_len).",
)
@click.option(
    "--query-words", type=click.IntRange(1, 8192), default=QUERY_WORDS, show_default=True, help="Query length."
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def cost_command(
    checkpoint: Path | None,
    preset: str,
    config_file: Path | None,
    video_steps: int | None,
    query_words: int,
    as_json: bool,
) -> None:
    """Parameters and FLOPs of IMG per module and for Table 12's groups (AIP, MGF, the whole model).

    \b
    FLOPs of one evaluation forward of one query (torch.utils.flop_counter: a multiply-add is 2 FLOPs).

    \b
    Examples:
      img-train cost                      the published Charades-STA model
      img-train cost runs/charades/best.pt --json
      img-train cost --config ablation.toml --video-steps 64
    """
    setup_logging("img-train")
    model = None
    config = PRESETS[preset]
    if checkpoint is not None and config_file is not None:
        fail("give CHECKPOINT or --config, not both (a checkpoint records its model)")
    if config_file is not None:
        try:
            config = _recipe_model(config_file, config)
        except ImgVmrError as error:
            fail(str(error))
            return
    if checkpoint is not None:
        from img_model.checkpoint import read_checkpoint
        from img_model.network.convert import CheckpointLayoutError, load_into
        from img_model.network.model import IMG

        try:
            read = read_checkpoint(checkpoint, expected="an img_model checkpoint (img-train, convert-official)")
            config = read.config
            model = IMG(config)
            load_into(model, read.state_dict)
        except (CheckpointLayoutError, ImgVmrError) as error:
            fail(str(error))
            return
    steps = video_steps or min(VIDEO_STEPS, config.max_pos_len)
    if steps > config.max_pos_len:
        fail(f"--video-steps {steps}: the model reads at most max_pos_len {config.max_pos_len} steps")
    if query_words > config.max_pos_len:
        fail(f"--query-words {query_words}: the model reads at most max_pos_len {config.max_pos_len} words")
    cost = model_cost(config, steps, query_words, model)
    click.echo(json.dumps(cost, indent=2) if as_json else cost_table(cost))


def _recipe_model(path: Path, preset: IMGConfig) -> IMGConfig:
    """The model of a recipe: its [model] section over the preset; the sizes the data decides are the preset's."""
    from img_model.train.config import DATA_DERIVED, read_toml, resolve

    dataset = read_toml(path).get("data", {}).get("dataset") or "charades-sta"
    derived = {name: getattr(preset, name) for name in DATA_DERIVED if hasattr(preset, name)}
    return resolve(path, {"data": {"dataset": dataset}}, derived).model
