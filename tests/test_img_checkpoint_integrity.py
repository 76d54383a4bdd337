"""A checkpoint carries the sha256 of its weights and every load checks it: one changed byte inside a tensor (a bad
disk or copy; torch.load does not check the zip's CRCs) is refused, naming the file as damaged. It used to
evaluate with exit 0 and one changed GloVe vector. Checkpoints written before the sha256 existed load with a note."""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from img_model.checkpoint import weights_sha256
from tests.img_cli import run_img_eval, run_img_train, train_tiny_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of one epoch of the tiny dataset (best.pt, last.pt)."""
    _, best = train_tiny_checkpoint(tmp_path_factory.mktemp("integrity"))
    return best.parent


def flip_a_byte_inside_the_largest_tensor(path: Path) -> str:
    """Flip one byte in the middle of the largest tensor's data in a torch zip file, in place; returns the entry."""
    with zipfile.ZipFile(path) as archive:
        entry = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size)
    with path.open("r+b") as handle:
        handle.seek(entry.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        where = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
        handle.seek(where)
        byte = handle.read(1)[0]
        handle.seek(where)
        handle.write(bytes([byte ^ 0x10]))
    return entry.filename


def test_a_flipped_byte_inside_a_tensor_of_a_checkpoint_is_refused_as_damaged(run: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "best.pt"
    shutil.copy(run / "best.pt", damaged)
    flip_a_byte_inside_the_largest_tensor(damaged)
    good, bad = (torch.load(path, weights_only=True)["state_dict"] for path in (run / "best.pt", damaged))
    assert sum(not torch.equal(good[name], bad[name]) for name in good) == 1  # torch.load itself takes it
    result = run_img_eval(damaged, "--threads", "1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        f"img-eval: error: {damaged} is damaged: its weights are not those it was saved with (their sha256 differs"
    )

    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    flip_a_byte_inside_the_largest_tensor(resumed / "last.pt")
    before = (resumed / "last.pt").read_bytes()
    result = run_img_train("--resume", resumed, "--no-progress")
    assert result.returncode == 2 and f"error: {resumed / 'last.pt'} is damaged: " in result.stderr, result.stderr
    assert (resumed / "last.pt").read_bytes() == before  # nothing trained on it, nothing overwritten


def test_a_checkpoint_from_before_the_weights_sha256_loads_with_a_note(run: Path, tmp_path: Path) -> None:
    stored = torch.load(run / "best.pt", weights_only=True)
    assert stored["weights_sha256"] == weights_sha256(stored["state_dict"])
    del stored["weights_sha256"]
    torch.save(stored, tmp_path / "older.pt")
    result = run_img_eval(tmp_path / "older.pt", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    note = f"{tmp_path / 'older.pt'} records no sha256 of its weights (written before img-vmr kept one): they cannot"
    assert result.stderr.count(note) == 1, result.stderr


def test_the_weights_sha256_covers_names_types_shapes_and_every_byte() -> None:
    weights = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    reference = weights_sha256(weights)
    assert weights_sha256(dict(reversed(weights.items()))) == reference  # the order of the mapping does not count
    assert weights_sha256({**weights, "a": weights["a"].t().contiguous().t()}) == reference  # nor the memory layout
    changed = {
        "name": {"c" if k == "a" else k: v for k, v in weights.items()},
        "type": {**weights, "b": torch.ones(2, dtype=torch.float16)},
        "shape": {**weights, "a": weights["a"].reshape(3, 2)},
        "byte": {**weights, "a": weights["a"] + torch.tensor([[0.0, 0, 0], [0, 0, 2**-20]])},
    }
    for what, other in changed.items():
        assert weights_sha256(other) != reference, what
