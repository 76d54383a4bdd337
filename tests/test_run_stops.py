"""Runs that stop before their end: preemption (SIGTERM) and a full disk. Finished videos are committed as far as
the store allows, the last line says truthfully how many, and the same command finishes the job later."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from extract.store import FeatureStore, parts_dir
from tests.conftest import run_cli
from tests.videos import make_video


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "img-extract"
    return [str(script)] if script.exists() else [sys.executable, "-m", "extract.cli"]


def _videos(folder: Path, count: int) -> Path:
    make_video(folder / "00.mp4", seconds=1, size="160x120", audio=False)
    for i in range(1, count):
        shutil.copy(folder / "00.mp4", folder / f"{i:02d}.mp4")
    return folder


@pytest.mark.slow
def test_sigterm_commits_finished_videos_and_says_how_many(tmp_path: Path, tiny_clip: Path) -> None:
    count = 30
    videos = _videos(tmp_path / "v", count)
    out = tmp_path / "feats.h5"
    args = [videos, "--out", out, "--clip-model", tiny_clip, "--workers", "1", "--fps", "8", "--commit-every", "4"]
    process = subprocess.Popen(
        [*_cli(), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(parts_dir(out).glob("part-*.h5")):
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # a part is committed; more videos are finished but not yet committed
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 143, stderr
    last = stderr.strip().splitlines()[-1]
    with FeatureStore(out) as store:
        committed = len(store)
    assert 4 <= committed < count, "the run finished before it could be stopped"
    assert last == (
        f"img-extract: error: terminated (SIGTERM); {committed} finished videos were committed; "
        "re-run the same command to resume"
    )  # committed >= 4: plural
    assert "Traceback" not in stderr
    rerun = run_cli(*args)
    assert rerun.returncode == 0 and f"{count - committed} done, {committed} skipped" in rerun.stderr


@pytest.mark.slow
def test_sigterm_before_any_video_is_finished_says_nothing_was_committed(tmp_path: Path, tiny_clip: Path) -> None:
    videos = _videos(tmp_path / "v", 3)
    out = tmp_path / "feats.h5"
    process = subprocess.Popen(
        [*_cli(), *map(str, [videos, "--out", out, "--clip-model", tiny_clip, "--no-progress"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # the device line: the run has begun, its models are not loaded yet
    assert first.startswith("img-extract: device: cpu"), first
    process.send_signal(signal.SIGTERM)
    stderr = first + process.communicate(timeout=120)[1]
    assert process.returncode == 143, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("img-extract: error: terminated (SIGTERM)") and "nothing was committed" in last, stderr
    assert "finished videos were committed" not in stderr and "Traceback" not in stderr
    if out.exists():
        with FeatureStore(out) as store:
            assert len(store) == 0


FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size=20m tmpfs "$MOUNT" || exit 77
head -c $((20 * 1024 * 1024 - 96 * 1024)) /dev/zero > "$MOUNT/filler" 2>/dev/null
"$@" > "$WORK/first.out" 2> "$WORK/first.err"; echo "$?" > "$WORK/first.rc"
"$PYTHON" -c "$REPORT" "$MOUNT/feats.h5" > "$WORK/store.json"
rm "$MOUNT/filler"
"$@" > "$WORK/second.out" 2> "$WORK/second.err"; echo "$?" > "$WORK/second.rc"
"""

REPORT = """
import json, sys
from extract.store import FeatureStore, parts_dir
with FeatureStore(sys.argv[1]) as store:
    print(json.dumps({"videos": len(store), "corrupt": len(store.corrupt_parts),
                      "tmp": [p.name for p in parts_dir(sys.argv[1]).glob("*.tmp")]}))
"""


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_true_line_and_a_rerun_completes(tmp_path: Path, tiny_clip: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs without root")
    count = 16
    videos = _videos(tmp_path / "v", count)
    mount = tmp_path / "small-disk"
    mount.mkdir()
    script = tmp_path / "full.sh"
    script.write_text(textwrap.dedent(FULL_DISK_SCRIPT))
    command = [*_cli(), str(videos), "--out", str(mount / "feats.h5"), "--clip-model", str(tiny_clip)]
    command += ["--commit-every", "1", "--workers", "1", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOUNT": str(mount), "WORK": str(tmp_path)}
    env |= {"PYTHON": sys.executable, "REPORT": REPORT}
    done = subprocess.run(["unshare", "-rm", "bash", str(script), *command], env=env, capture_output=True, timeout=600)
    if done.returncode == 77 or not (tmp_path / "first.rc").exists():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {done.stderr.decode()[-200:]}")
    first_err = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "3", first_err
    store = json.loads((tmp_path / "store.json").read_text())
    assert store["tmp"] == [] and store["corrupt"] == 0 and 1 <= store["videos"] < count
    last = first_err.strip().splitlines()[-1]
    assert last.startswith("img-extract: error: cannot write the feature store ") and "no space left on device" in last
    said = re.search(r"; (\d+) finished videos? (?:was|were) committed; make room", last)
    assert said is not None and int(said.group(1)) == store["videos"], last
    summary = re.search(r"summary: (\d+) finished, (\d+) committed", first_err)  # not "16 done" for 3 committed
    assert summary is not None and int(summary.group(2)) == store["videos"] <= int(summary.group(1)), first_err
    assert "Traceback" not in first_err and "Segmentation" not in first_err
    second_err = (tmp_path / "second.err").read_text()
    assert (tmp_path / "second.rc").read_text().strip() == "0", second_err
    assert f"{count - store['videos']} done, {store['videos']} skipped" in second_err
