"""A full disk under img-train, img-eval and img-predict: one line, exit 3, what to free, and nothing lost (every
file written before is whole, no half-written file is left, a resume continues the run exactly). It used to be
"internal error: OSError: [Errno 28] No space left on device" (or torch.save's "unexpected pos"), exit 1.

Two ways: a disk that is really full (a small tmpfs mounted in a private mount namespace with `unshare -rm`, as
tests/test_store_disk_full.py does; skipped where unprivileged namespaces are not allowed), and a deterministic
injection that always runs: the real CLI in a subprocess whose writes to one chosen file fail with ENOSPC after a
number of bytes, as a disk that fills at that moment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from img_model.data.synthetic import SyntheticDataset
from tests.img_cli import run_img_train, train_args
from tests.test_img_train import tiny_and_straight, tiny_stopped

ROOT = Path(__file__).resolve().parents[1]

# argv: file-name pattern, which opening of such a file fails (1 = the first), bytes it takes before the disk is
# full, the CLI's module, then its arguments.
FILL_AT = r"""
import builtins, errno, fnmatch, io, os, runpy, sys

pattern, occurrence, budget, module = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
del sys.argv[1:5]
opened, failing = 0, set()
real_open, real_os_open, real_os_write, real_os_close = io.open, os.open, os.write, os.close


def chosen(name):
    global opened
    if not fnmatch.fnmatch(os.path.basename(os.fsdecode(name)), pattern):
        return False
    opened += 1
    return opened == occurrence


def spend(count):
    global budget
    if count > budget:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    budget -= count


class FullDisk:
    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        spend(len(data))
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *failure):
        self._handle.close()


def fake_open(file, mode="r", *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    writes = any(flag in mode for flag in "wax+")
    return FullDisk(handle) if writes and isinstance(file, (str, bytes, os.PathLike)) and chosen(file) else handle


def fake_os_open(path, flags, *args, **kwargs):
    fd = real_os_open(path, flags, *args, **kwargs)
    if flags & (os.O_WRONLY | os.O_RDWR) and chosen(path):
        failing.add(fd)
    return fd


def fake_os_write(fd, data):
    if fd in failing:
        spend(len(data))
    return real_os_write(fd, data)


def fake_os_close(fd):
    failing.discard(fd)
    return real_os_close(fd)


io.open = builtins.open = fake_open
os.open, os.write, os.close = fake_os_open, fake_os_write, fake_os_close
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_on_a_filling_disk(
    tmp_path: Path, module: str, pattern: str, occurrence: int, budget: int, *args: str | Path
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "fill_at.py"
    script.write_text(FILL_AT)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, str(script), pattern, str(occurrence), str(budget), module, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_and_straight(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run trained straight through on a disk with room (2 epochs of 2 steps, an evaluation per step)."""
    result = tiny_and_straight(tmp_path_factory)[1]
    return Path(result.args[result.args.index("--out") + 1])


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def run_end(run: Path) -> dict[str, Any]:
    """What a finished run ends with: its weights and step, every metrics line, its summary."""
    last = torch.load(run / "last.pt", weights_only=True)
    return {
        "weights_sha256": last["weights_sha256"],
        "step": last["training"]["step"],
        "metrics": [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()],
        "summary": (run / "summary.txt").read_text(),
    }


def assert_same_end(straight: Path, resumed: Path, end: dict[str, Any]) -> None:
    expected = run_end(straight)
    assert end["summary"].replace(str(resumed), str(straight)) == expected.pop("summary")
    assert {key: value for key, value in end.items() if key != "summary"} == expected


# One run meets a full disk at each of its writes in turn, each time resumed as the line says: (the file whose
# writing fills the disk, which opening of it, after how many bytes; what the line names; the checkpoint it keeps).
FILLS = (
    (".config.toml.*.tmp", 1, 100, "config.toml", "no checkpoint was written yet"),
    (".last.pt.*.tmp", 2, 20_000, "last.pt", "last good checkpoint: {run}/last.pt (step 1)"),  # mid-torch.save
    ("metrics.jsonl", 1, 10, "metrics.jsonl", "last good checkpoint: {run}/last.pt (step 1)"),  # mid-line
    ("events.out.tfevents.*", 3, 0, "tensorboard", "last good checkpoint: {run}/last.pt (step "),
    (".summary.txt.*.tmp", 1, 0, "summary.txt", "last good checkpoint: {run}/last.pt (step 4)"),
)


@pytest.mark.slow
def test_a_disk_that_fills_at_each_write_of_a_run_is_one_line_exit_3_and_the_run_ends_as_the_straight_one(
    tiny: SyntheticDataset, straight: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    for pattern, occurrence, budget, name, kept in FILLS:
        args = ["--resume", str(run), "--no-progress"] if (run / "last.pt").exists() else train_args(tiny, run)
        result = run_on_a_filling_disk(tmp_path, "img_model.cli.train", pattern, occurrence, budget, *args)
        assert result.returncode == 3, result.stderr
        last = result.stderr.splitlines()[-1]
        assert last.startswith(f"img-train: error: cannot write {run / name}: no space left on device; "), last
        assert kept.format(run=run) in last and " MiB free in " in last and "Traceback" not in result.stderr, last
        resumable = (run / "last.pt").exists()
        assert last.endswith(f"then img-train --resume {run}" if resumable else "then run the same command again")
        assert not [p.name for p in run.rglob("*.tmp")], name  # no half-written file
        if (run / "metrics.jsonl").exists():
            assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()), name
    again = run_img_train("--resume", run, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert_same_end(straight, run, run_end(run))


@pytest.mark.slow
@pytest.mark.parametrize("output", ["--predictions", "--report"])
def test_a_disk_that_fills_while_img_eval_writes_its_files_keeps_the_metrics_and_leaves_no_half_file(
    straight: Path, tmp_path: Path, output: str
) -> None:
    target = tmp_path / "out" / ("predictions.jsonl" if output == "--predictions" else "report.html")
    result = run_on_a_filling_disk(
        tmp_path,
        "img_model.cli.evaluate",
        f".{target.name}.*.tmp",
        1,
        1_000,
        straight / "best.pt",
        "--json",
        "--threads",
        "1",
        output,
        target,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"img-eval: error: cannot write {output} {target}: no space left on device; make room ("
    )
    assert result.stderr.splitlines()[-1].endswith("then run img-eval again (the metrics are printed above)")
    assert json.loads(result.stdout)["queries"] > 0  # the metrics are printed before the file is written
    assert list((tmp_path / "out").iterdir()) == []  # no half file


def _unshare_available(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    probe = tmp_path / "probe"
    probe.mkdir()
    mounted = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs '{probe}'"], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {mounted.stderr.strip()}")


# Runs inside the namespace, the run folder on a 6 MiB tmpfs: the run stopped after one epoch (copied in); then the
# disk fills to half a checkpoint's room and --resume meets it; then the space is freed and --resume finishes the
# run, copied out (the tmpfs goes with the namespace). img-eval --predictions too.
REAL_DISK = r"""
import json, os, shutil, subprocess, sys
from pathlib import Path

disk, stopped, checkpoint, final = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
run = disk / "run"
out = {}

def command(module, *arguments):
    done = subprocess.run([sys.executable, "-m", module, *map(str, arguments)], capture_output=True, text=True)
    return {"code": done.returncode, "stderr": done.stderr, "stdout": done.stdout}

def fill(leave):
    (disk / "filler").unlink(missing_ok=True)
    stat = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(max(0, stat.f_bavail * stat.f_frsize - leave)))

def snapshot():
    return {str(p.relative_to(run)): p.read_bytes().hex() for p in sorted(run.glob("*.pt"))}

shutil.copytree(stopped, run)
size = (run / "last.pt").stat().st_size
before = snapshot()
fill(size // 2)
out["full"] = command("img_model.cli.train", "--resume", run, "--no-progress")
out["kept"] = snapshot() == before
out["tmp_left"] = [p.name for p in disk.rglob("*.tmp")]
fill(0)
out["eval_full"] = command("img_model.cli.evaluate", checkpoint, "--json", "--threads", "1", "--predictions",
                           disk / "predictions.jsonl")
out["predictions_left"] = [p.name for p in disk.iterdir() if "predictions" in p.name]
(disk / "filler").unlink()
out["resumed"] = command("img_model.cli.train", "--resume", run, "--no-progress")
shutil.copytree(run, final)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_really_full_disk_under_the_run_folder_is_one_line_and_the_run_resumes_to_the_straight_runs_end(
    straight: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _unshare_available(tmp_path)
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "script.py").write_text(REAL_DISK)
    stopped = tiny_stopped(tmp_path_factory)[0]  # the tiny run after `--stop-after 1`
    command = (
        f"mount -t tmpfs -o size=6m tmpfs '{disk}' && exec '{sys.executable}' '{tmp_path / 'script.py'}' "
        f"'{disk}' '{stopped}' '{straight / 'best.pt'}' '{tmp_path / 'final'}'"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    full = out["full"]
    assert full["code"] == 3 and "Traceback" not in full["stderr"], full["stderr"]
    last = full["stderr"].splitlines()[-1]
    assert last.startswith(f"img-train: error: cannot write {disk / 'run'}/") and ": no space left on device; " in last
    assert f"last good checkpoint: {disk / 'run' / 'last.pt'} (step 2); make room (" in last
    assert last.endswith(f"then img-train --resume {disk / 'run'}")
    assert out["kept"] and out["tmp_left"] == []
    evaluated = out["eval_full"]
    assert evaluated["code"] == 3 and json.loads(evaluated["stdout"])["queries"] > 0, evaluated["stderr"]
    assert f"cannot write --predictions {disk / 'predictions.jsonl'}: no space left on device" in evaluated["stderr"]
    assert out["predictions_left"] == []
    assert out["resumed"]["code"] == 0, out["resumed"]["stderr"]
    assert_same_end(straight, disk / "run", run_end(tmp_path / "final"))
