"""The project's own promises: CI runs the README's test command, the README's first command is the tour, ruff clean
(the documentation site and its CLI reference: tests/test_docs.py)."""

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


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


def test_readme_first_command_installs_and_takes_the_offline_tour() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", _readme(), re.DOTALL)
    install = next(block for block in blocks if "pip install" in block)
    assert install.endswith("&& .venv/bin/img-pipeline tour --out tour/"), install  # tests/test_tour.py runs it
    assert "HF_HUB_OFFLINE" not in install  # the tour downloads nothing: no switch needed
    extract = next(block for block in blocks if "img-extract" in block)
    assert extract == ".venv/bin/img-extract videos/ --out feats.h5"
    commands = _readme().split("--8<-- [start:commands]", 1)[1].split("--8<-- [end:commands]", 1)[0]
    folder = re.search(r"`(tests/data/media/)` holds one real clip", commands)
    assert folder is not None
    assert any(p.suffix == ".mp4" for p in (ROOT / folder.group(1)).iterdir())


def test_test_data_readme_lists_every_file_with_its_sha256() -> None:
    data = ROOT / "tests" / "data"
    listed = dict(
        re.findall(r"^\| `([^`]+)` \| [\d,]+ \| `([0-9a-f]{64})` \|$", (data / "README.md").read_text(), re.M)
    )
    files = {p.relative_to(data).as_posix(): p for p in data.rglob("*") if p.is_file() and p.name != "README.md"}
    assert set(listed) == set(files)
    for name, path in files.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == listed[name], name


def test_tests_read_nothing_outside_the_repository() -> None:
    sources = [*(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    for path in (p for p in sources if p.name != Path(__file__).name):
        text = path.read_text()
        assert '"shared"' not in text and "../shared" not in text, f"{path} reads ../shared; use tests/testdata.py"


def test_what_the_first_command_writes_is_ignored_by_git(tmp_path: Path) -> None:
    """The first commands in a clone: `img-pipeline tour --out tour/` leaves tour/, `img-extract videos/ --out
    feats.h5` feats.h5 and feats.h5.parts/ (parts, writer.lock, extract.log): none of it may show up as untracked."""
    git = shutil.which("git")
    if git is None:
        return  # nothing to check without git
    written = [
        "feats.h5",
        "feats.h5.parts/writer.lock",
        "feats.h5.parts/extract.log",
        "feats.h5.parts/part-20250101T000000.000000-host-1-1.h5",
        "tour/report.html",
        "tour/run/best.pt",
        "tour/tour.toml",
    ]
    result = subprocess.run([git, "check-ignore", "--no-index", *written], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.split() == written, result.stderr
    assert "*.h5.d/" not in (ROOT / ".gitignore").read_text().split()  # a layout the store no longer has


def test_imports_run_downward_only() -> None:
    """The import contracts of pyproject.toml ([tool.importlinter]): the layers across packages and inside each,
    and no cycle between the modules of a package."""
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint_imports is not None, "import-linter is a dev dependency"
    result = subprocess.run([lint_imports, "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
