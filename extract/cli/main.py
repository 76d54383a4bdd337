"""img-extract: the command group and its subcommands, one module per group (run, store, text, manifest, weights,
doctor)."""

from __future__ import annotations

import click

from extract import __version__
from extract.cli.datasets import datasets_group
from extract.cli.doctor import doctor_command
from extract.cli.manifest import manifest_command
from extract.cli.run import run_command
from extract.cli.store import compact_command, export_command, import_command, inspect_command, merge_command
from extract.cli.text import text_command
from extract.cli.weights import weights_group
from extract.core.console import CommandGroup


@click.group("img-extract", cls=CommandGroup, default="run", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="img-extract")
def main() -> None:
    """Extract video and audio features for video moment retrieval into an HDF5 feature store.

    \b
    img-extract VIDEOS --out feats.h5 [options]   extract (same as `img-extract run ...`)
    img-extract inspect feats.h5                  what a store holds, with provenance and failures
    img-extract doctor                            what this machine gives img-vmr (ffmpeg, torch, GPUs, weights)
    img-extract datasets stats NAME               query, moment, video and word statistics of a dataset
    """


for command in (
    run_command,
    inspect_command,
    weights_group,
    export_command,
    import_command,
    doctor_command,
    manifest_command,
    text_command,
    compact_command,
    merge_command,
    datasets_group,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
