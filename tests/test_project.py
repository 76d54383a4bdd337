"""The project's own promises: README in sync with --help, CI runs the README's test command, ruff clean."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from extract.cli_reference import END, START, reference

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_cli_reference_matches_help() -> None:
    section = _readme().split(START, 1)[1].split(END, 1)[0].strip()
    assert section == reference().strip(), "run: python -m extract.cli_reference --write README.md"


def test_ci_runs_the_readme_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", _readme(), re.DOTALL)
    test_command = next(block for block in blocks if "pytest" in block)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff is not None, "ruff is a dev dependency"
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    result = subprocess.run([ruff, "format", "--check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_help_teaches_every_command() -> None:
    for args in ([], ["run"], ["inspect"]):
        result = subprocess.run(
            [sys.executable, "-m", "extract.cli", *args, "--help"], capture_output=True, text=True, cwd=ROOT
        )
        assert result.returncode == 0 and "Usage:" in result.stdout
