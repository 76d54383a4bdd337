"""The one atomic writer (extract/core/files.py): whole files or none, fsync'd, nothing left behind on failure."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from extract.core import files
from extract.core.files import install_folder, write_atomically


def test_a_file_is_written_whole_and_both_it_and_its_folder_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    target = tmp_path / "out.json"
    target.write_text("old")
    write_atomically(target, '{"new": true}')
    assert target.read_text() == '{"new": true}'
    assert synced[-1] == str(tmp_path) and synced[0].endswith(".tmp")  # the file, then the folder after the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"previous")

    def breaks_halfway(handle: object) -> None:
        handle.write(b"half")  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # a Ctrl-C in the middle of torch.save

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, breaks_halfway)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_folder_is_installed_once(tmp_path: Path) -> None:
    first, second = tmp_path / ".index.1.tmp", tmp_path / ".index.2.tmp"
    for folder in (first, second):
        folder.mkdir()
        write_atomically(folder / "meta.json", folder.name)
    assert install_folder(first, tmp_path / "index")
    assert not install_folder(second, tmp_path / "index") and second.is_dir()  # the second builder comes too late
    assert (tmp_path / "index" / "meta.json").read_text() == ".index.1.tmp"


def test_only_the_one_writer_renames_files_into_place() -> None:
    """Every file img-vmr replaces goes through extract/core/files.py (fsync of the file and of its folder, no
    temporary left on failure): no other module renames, moves or writes temporary files of its own."""
    root = Path(__file__).resolve().parents[1]
    own = re.compile(r"os\.replace\(|os\.rename\(|shutil\.move\(|NamedTemporaryFile|mkstemp\(")
    writers = []
    for package in ("extract", "manifests", "img_model", "pipelines"):
        for path in sorted((root / package).rglob("*.py")):
            if path == root / "extract" / "core" / "files.py":
                continue
            writers += [
                f"{path.relative_to(root)}:{n}"
                for n, line in enumerate(path.read_text().splitlines(), 1)
                if own.search(line)
            ]
    assert writers == []
