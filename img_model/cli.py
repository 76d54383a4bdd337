"""img-train: training-side commands for the IMG model. The CLI maps flags onto configs and nothing else reads
flags; every failure is one line on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from img_model.convert import CheckpointLayoutError, load_official_checkpoint, save_checkpoint

EXIT_USAGE = 2


def _fail(message: str) -> None:
    click.echo(f"img-train: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _reason(error: Exception) -> str:
    """One line for an OSError, or for the RuntimeError torch.save raises when it cannot open or write a file."""
    if isinstance(error, OSError):
        return (error.strerror or str(error)).lower()
    return str(error).rsplit("strerror: ", 1)[-1].splitlines()[0].strip().lower()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train, convert and inspect IMG video-moment-retrieval models."""


@main.command("convert-official")
@click.argument("source", metavar="IN.t7", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("target", metavar="OUT.pt", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--num-heads",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Attention heads of the checkpoint (not visible in its shapes; 8 in every published setting).",
)
def convert_official(source: Path, target: Path, num_heads: int) -> None:
    """Convert a checkpoint saved by the authors' code (IN.t7, a plain IMGNet state dict) into an img_model
    checkpoint (OUT.pt: our names plus the configuration read from the checkpoint's shapes)."""
    try:
        model = load_official_checkpoint(source, num_heads=num_heads)
    except (CheckpointLayoutError, ValueError) as exc:  # ValueError: a configuration the shapes contradict
        _fail(f"{source}: {exc}")
        return
    config = model.config
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, target)
    except (OSError, RuntimeError) as exc:  # unwritable, under a file, a folder, disk full (torch: RuntimeError)
        if target.is_file():
            target.unlink()  # never leave a half-written checkpoint
        _fail(f"cannot write {target} ({_reason(exc)}); choose a writable OUT.pt")
        return
    click.echo(
        f"wrote {target}: IMG dim {config.dim}, video {config.video_feature_dim}-d, "
        f"audio {config.audio_feature_dim}-d, {model.trainable_parameters():,} trainable parameters"
    )


if __name__ == "__main__":
    main()
