"""A full disk under the text store or the GloVe index: one error line, no traceback, nothing half-written left,
and the queries already committed are kept for the next run.

As in tests/test_store_disk_full.py, the output sits on a real 2 MiB tmpfs mounted in a private mount namespace
(`unshare -rm`), so the kernel itself answers ENOSPC; skipped where unprivileged namespaces are not allowed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.img_cli import tiny_dataset

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the namespace: img-extract text three times against the small disk, as a user would.
SCRIPT = r"""
import json, os, subprocess, sys
from pathlib import Path

disk, work = Path(sys.argv[1]), Path(sys.argv[2])
queries, store, source, glove = work / "queries.jsonl", work / "feats.h5", work / "text.h5", work / "glove.txt"
out = {}

def text(*args):
    command = [sys.executable, "-m", "extract.cli", "text", "--annotations", str(queries), "--store", str(store),
               *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True)
    return {"code": done.returncode, "stderr": done.stderr}

def fill(leave):
    # a filler file that leaves `leave` bytes free on the disk
    (disk / "filler").unlink(missing_ok=True)
    stat = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(max(0, stat.f_bavail * stat.f_frsize - leave)))

def left_over():
    return sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if ".tmp" in p.name)

# What the run writes, measured on the ordinary disk first.
reference = text("--vocabulary-from", source, "--out", work / "reference.h5")
assert reference["code"] == 0, reference["stderr"]
size = (work / "reference.h5").stat().st_size

fill(size // 4)  # no room even for the part of committed queries
out["no_room"] = text("--vocabulary-from", source, "--out", disk / "text.h5")
out["no_room_left"] = left_over()

fill(size + size // 2)  # room for the part, not for the final store beside it
out["no_room_to_merge"] = text("--vocabulary-from", source, "--out", disk / "text.h5")
out["parts_kept"] = sorted(p.name for p in (disk / "text.h5.parts").glob("part-*.h5"))
out["no_room_to_merge_left"] = left_over()

os.unlink(disk / "filler")
out["resumed"] = text("--vocabulary-from", source, "--out", disk / "text.h5")
from extract.text.store import TextStore
out["same_ids"] = False
if (disk / "text.h5").exists():
  with TextStore(disk / "text.h5") as resumed, TextStore(work / "reference.h5") as reference_store:
    out["same_ids"] = all(
        resumed.word_ids(qid).tolist() == reference_store.word_ids(qid).tolist() for qid in reference_store.qids()
    ) and len(resumed) == len(reference_store)
  (disk / "text.h5").unlink()

fill(64 * 1024)  # the GloVe index (about 1 MB of vectors) cannot be built here
out["glove"] = text("--embed", f"glove:{glove}", "--glove-cache", disk / "cache", "--out", work / "glove.h5")
out["glove_left"] = sorted(p.name for p in (disk / "cache").iterdir()) if (disk / "cache").exists() else []
print(json.dumps(out))
"""


def _write_inputs(work: Path) -> None:
    """The tiny synthetic dataset's store and text store, 600 queries about its videos, a GloVe file."""
    data = tiny_dataset(work / "data")
    os.replace(data.features, work / "feats.h5")
    os.replace(data.features.with_name("feats.h5.parts"), work / "feats.h5.parts")
    os.replace(data.text, work / "text.h5")
    rows = [json.loads(line) for line in data.annotations.read_text().splitlines()]
    sentences = ("a dog barks loudly at the door", "someone waves a hand and sits", "the phone rings twice")
    with (work / "queries.jsonl").open("w") as out:
        for number in range(600):
            row = rows[number % len(rows)]
            query = f"{sentences[number % 3]} {number}"
            out.write(json.dumps({**row, "qid": f"q{number}", "query": query}) + "\n")
    rng = np.random.default_rng(0)
    words = ["a", "dog", "barks", "the", "door", *(f"word{n}" for n in range(5000))]
    lines = (f"{word} " + " ".join(f"{v:.5f}" for v in rng.standard_normal(50)) for word in words)
    (work / "glove.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_a_full_disk_under_the_text_store_or_the_glove_index_is_one_line_and_keeps_committed_queries(
    tmp_path: Path,
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    disk, work = tmp_path / "disk", tmp_path / "work"
    disk.mkdir()
    work.mkdir()
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=2m tmpfs '{disk}'"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    _write_inputs(work)
    (tmp_path / "script.py").write_text(SCRIPT)
    command = (
        f"mount -t tmpfs -o size=2m tmpfs '{disk}' && "
        f"exec '{sys.executable}' '{tmp_path / 'script.py'}' '{disk}' '{work}'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    for key in ("no_room", "no_room_to_merge"):
        run = out[key]
        assert run["code"] == 2, run["stderr"]
        assert "Traceback" not in run["stderr"] and run["stderr"].count("\n") == 1, run["stderr"]
        assert "no space left on device; committed queries are kept" in run["stderr"]
        assert "cannot write the text store" in run["stderr"] and str(disk) in run["stderr"]
    assert out["no_room_left"] == [] and out["no_room_to_merge_left"] == []
    assert len(out["parts_kept"]) == 1  # the queries computed before the merge failed are on disk
    assert out["resumed"]["code"] == 0, out["resumed"]["stderr"]
    assert "0 queries embedded, 600 already in the store" in out["resumed"]["stderr"]
    assert out["same_ids"]
    glove = out["glove"]
    assert glove["code"] == 2 and "Traceback" not in glove["stderr"], glove["stderr"]
    last = glove["stderr"].splitlines()[-1]  # after the line saying the index is being built
    assert last.startswith(f"img-extract: error: cannot build the GloVe index in {disk / 'cache'}: no space left")
    assert out["glove_left"] == []
