"""`img-extract doctor`: what this machine gives img-vmr (the checks are extract/run/doctor.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from extract.core.console import EXIT_FAILED, EXIT_OK, setup_logging
from extract.core.options import weights_dir_option


@click.command("doctor", epilog="Exit status: 0 nothing required is broken, 1 something is (the line says what).")
@weights_dir_option()
@click.option("--verify", is_flag=True, help="Hash every present weights file against its published checksums.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_command(weights_dir: Path | None, verify: bool, as_json: bool) -> None:
    """Check what this machine gives img-vmr: ffmpeg, torch and its CUDA build, the GPUs (and GPUs the driver
    sees that torch cannot use), the published weights, the Hugging Face models and cache, offline switches.

    \b
    Fast: weights are checked by presence and size (every run verifies the files it loads); --verify hashes
    them. Missing weights or models are notes: they are downloaded on first use when online. Offline means an
    offline switch is set (HF_HUB_OFFLINE=1, IMG_VMR_OFFLINE=1) or the Hugging Face hub ($HF_ENDPOINT) does not
    answer within 3 s; then the last line says so (img-pipeline tour runs without any model).
    """
    from extract.run.doctor import render, run_checks

    setup_logging("img-extract")
    checks = run_checks(weights_dir, verify)
    if as_json:
        click.echo(json.dumps([check.as_json() for check in checks], indent=2))
    else:
        click.echo(render(checks))
    sys.exit(EXIT_FAILED if any(check.status == "broken" for check in checks) else EXIT_OK)
