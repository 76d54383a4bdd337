"""`img-extract weights list|fetch|verify`: the published model files, their cache and their checksums."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from extract.core.console import EXIT_FAILED, EXIT_OK, fail, setup_logging
from extract.core.errors import ImgVmrError
from extract.core.options import weights_dir_option


@click.group("weights")
def weights_group() -> None:
    """The published model files: list them, fetch them into the cache, verify their checksums."""


@weights_group.command("list")
@weights_dir_option()
def weights_list(weights_dir: Path | None) -> None:
    """Every published file the presets use, where it is found (or 'missing'), its URL and published checksum."""
    from extract.models.weights import REGISTRY, find_local

    for entry in REGISTRY.values():
        found = find_local(entry.name, weights_dir)
        checksums = ", ".join(f"{kind} {value}" for kind, value in entry.published_checksums().items())
        click.echo(f"{entry.name:<32} {'missing' if found is None else found}")
        click.echo(f"    {entry.layout}; presets: {', '.join(entry.used_by)}")
        click.echo(f"    {entry.url}")
        click.echo(f"    published checksum: {checksums or 'none'}")


@weights_group.command("fetch")
@click.argument("names", nargs=-1, required=True)
@weights_dir_option("Where to put them (default $IMG_WEIGHTS_DIR or ~/.cache/img-vmr).")
def weights_fetch(names: tuple[str, ...], weights_dir: Path | None) -> None:
    """Download published files NAMES (see `weights list`), verified, unless already there."""
    from extract.models.weights import default_weights_dir, fetch_weights

    setup_logging("img-extract")
    try:
        for name in names:
            click.echo(str(fetch_weights(name, weights_dir or default_weights_dir())))
    except ImgVmrError as error:
        fail(str(error))


@weights_group.command("verify")
@click.argument("names", nargs=-1)
@weights_dir_option()
def weights_verify(names: tuple[str, ...], weights_dir: Path | None) -> None:
    """Check the local copies of NAMES (default: all that are present) against their published checksums.

    Prints 'ok' only when a published checksum was compared, 'present, no published checksum' for a file whose
    publisher gives none; exits 1 when a file is missing (when named) or contradicts its checksum.
    """
    from extract.models.weights import REGISTRY, find_local, registry_entry, verify_weights

    setup_logging("img-extract")
    bad = 0
    for name in names or tuple(REGISTRY):
        try:
            entry = registry_entry(name)
            path = find_local(name, weights_dir)
            if path is None:
                if names:
                    click.echo(f"{name}: missing", err=True)
                    bad += 1
                continue
            click.echo(f"{name}: {verify_weights(path, entry).describe()} ({path})")
        except ImgVmrError as error:
            click.echo(f"img-extract: error: {error}", err=True)
            bad += 1
    sys.exit(EXIT_FAILED if bad else EXIT_OK)
