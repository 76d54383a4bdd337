"""A full disk under the store: one StoreWriteError line, nothing pending lost, no .tmp left, no crash.

The store sits on a real 2 MiB tmpfs mounted in a private mount namespace (`unshare -rm`), so the kernel
itself answers ENOSPC, as on a full disk; the test is skipped where unprivileged namespaces are not allowed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, os, sys
from pathlib import Path
import numpy as np
from extract.core.errors import StoreWriteError
from extract.store import FeatureStore, StoreWriter, Track, VideoRecord, list_parts, parts_dir
from extract.store.compact import compact

disk = Path(sys.argv[1])
store = disk / "feats.h5"
(disk / "filler").write_bytes(bytes(1_500_000))  # leaves about 600 kB: room for two parts of two videos
writer = StoreWriter(store, {"clip": {"recipe": {"preset": "clip"}, "software": {}}})
out = {}
for i in range(20):
    rows = np.full((100, 256), i, np.float32)  # 100 kB per video
    writer.add_video(VideoRecord(f"v{i:02d}", {"duration": 1.0}, {"clip": Track(rows, np.zeros((100, 2)))}))
    if writer.pending == 2:
        try:
            writer.commit()
        except StoreWriteError as error:
            out["commit_error"] = str(error)
            break
out["pending"] = writer.pending
out["committed_videos"] = writer.committed_videos
out["tmp_left"] = [p.name for p in parts_dir(store).iterdir() if p.name.endswith(".tmp")]
with FeatureStore(store) as reader:
    out["readable"] = reader.video_ids()

(disk / "filler").unlink()  # space freed: the same writer commits what was pending
writer.close()
with FeatureStore(store) as reader:
    out["after_freeing"] = {v: float(reader.track(v, "clip").features[0, 0]) for v in reader.video_ids()}

fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # now fill the disk to the last byte
for size in (1 << 16, 1 << 12, 1):
    try:
        while True:
            os.write(fd, bytes(size))
    except OSError:
        pass
os.close(fd)
with FeatureStore(store) as reader:
    try:
        reader.write_index()
    except StoreWriteError as error:
        out["index_error"] = str(error)
before = list_parts(parts_dir(store))
try:
    compact(store)
except StoreWriteError as error:
    out["compact_error"] = str(error)
out["parts_kept"] = list_parts(parts_dir(store)) == before
out["files_left"] = sorted(p.name for p in disk.rglob("*") if p.name.endswith(".tmp"))
print(json.dumps(out))
"""


def _run_on_small_tmpfs(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=2m tmpfs '{disk}'"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    (tmp_path / "script.py").write_text(SCRIPT)
    command = f"mount -t tmpfs -o size=2m tmpfs '{disk}' && exec '{sys.executable}' '{tmp_path / 'script.py'}' '{disk}'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, env=env, timeout=120)


def test_a_full_disk_is_one_error_line_and_loses_nothing_pending(tmp_path: Path) -> None:
    result = _run_on_small_tmpfs(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr  # no h5py tracebacks from objects it could not close
    out = json.loads(result.stdout)
    store = tmp_path / "disk" / "feats.h5"
    for key in ("commit_error", "index_error", "compact_error"):
        assert out[key] == f"cannot write the feature store {store}: no space left on device", key
    assert out["committed_videos"] == 4 and out["pending"] == 2 and out["tmp_left"] == []
    assert out["readable"] == ["v00", "v01", "v02", "v03"]
    assert out["after_freeing"] == {f"v{i:02d}": float(i) for i in range(6)}
    assert out["parts_kept"] and out["files_left"] == []
