"""`img-extract import-img` of PyTorch feature files: the IMG authors' InternVideo2 layout (a folder of <vid>.pt, one
[T, 768] tensor each, img_spec.md §2.1) and a single .pt dict of video id -> tensor, read with
torch.load(weights_only=True) once every record is known to fit the file; hostile and damaged files are one line."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core.errors import StoreCorruptError
from extract.store import FeatureStore
from extract.store.interop import import_img
from tests.conftest import run_cli


def _import(source: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_cli("import-img", source, "--out", out, "--feature", "internvideo2", *extra)


def _one_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


def test_a_folder_of_authors_pt_files_is_imported_per_video(tmp_path: Path) -> None:
    source = tmp_path / "visual_features_6b"
    source.mkdir()
    rows = torch.arange(6 * 768, dtype=torch.float32).reshape(6, 768) / 1000
    torch.save(rows, source / "AO8RW.pt")
    torch.save(rows[:4].half(), source / "Y6R7T.pt")
    torch.save(rows[:3].bfloat16(), source / "3MSZA.mp4.pt")  # the key is the text before the first "."
    result = _import(source, tmp_path / "f.h5", "--row-seconds", "2")
    assert result.returncode == 0, result.stderr
    with FeatureStore(tmp_path / "f.h5") as store:
        assert store.video_ids() == ["3MSZA", "AO8RW", "Y6R7T"]
        np.testing.assert_array_equal(store.track("AO8RW", "internvideo2").features, rows.numpy())
        assert store.track("Y6R7T", "internvideo2").features.dtype == np.float16
        bf16 = store.track("3MSZA", "internvideo2").features
        assert bf16.dtype == np.float32 and bf16.shape == (3, 768)  # numpy has no bfloat16
        np.testing.assert_array_equal(bf16, rows[:3].bfloat16().float().numpy())
        np.testing.assert_allclose(store.track("AO8RW", "internvideo2").timestamps[1], [2, 4])
        assert store.provenance("internvideo2")["imported_from"] == str(source.resolve())


def test_one_pt_file_of_video_id_to_tensor_is_imported(tmp_path: Path) -> None:
    source = tmp_path / "features.pt"
    torch.save({"v_a": torch.ones(5, 16), "v_b": torch.zeros(2, 16)}, source)
    assert import_img(source, tmp_path / "f.h5", "released", None) == 2
    with FeatureStore(tmp_path / "f.h5") as store:
        assert store.track("v_a", "released").features.shape == (5, 16)
        assert np.isnan(store.track("v_b", "released").timestamps).all()


class _Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch PWNED",))


def test_a_pt_file_that_runs_code_is_refused_for_safety(tmp_path: Path) -> None:
    source = tmp_path / "released"
    source.mkdir()
    torch.save(torch.ones(2, 4), source / "fine.pt")
    torch.save({"rows": _Exploit()}, source / "evil.pt")
    line = _one_line(_import(source, tmp_path / "f.h5"))
    assert f"{source / 'evil.pt'} was refused for safety: it asks for " in line
    assert "system, and only tensors and plain containers are loaded" in line
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    assert not (tmp_path / "f.h5").exists()  # nothing half-imported


def _rewrite_pickle(source: Path, target: Path, old: bytes, new: bytes) -> Path:
    """A copy of a torch zip file whose pickle has `old` replaced by `new`."""
    with zipfile.ZipFile(source) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(target, "w") as archive:
        for info, data in members:
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            archive.writestr(info, data)
    return target


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        (b"cpuq\x04K\x04t", b"cpuq\x04J\xff\xff\xff\x7ft", "record size (16 bytes) does not match expected size"),
        (b"K\x00K\x04\x85", b"K\x00J\xff\xff\xff\x7f\x85", "is not a readable PyTorch file"),
    ],
    ids=["storage-larger-than-its-record", "tensor-larger-than-its-storage"],
)
def test_a_pt_file_claiming_more_than_it_holds_is_one_line_before_any_allocation(
    tmp_path: Path, old: bytes, new: bytes, why: str
) -> None:
    small = tmp_path / "small.pt"
    torch.save(torch.zeros(4), small)
    source = tmp_path / "released"
    source.mkdir()
    _rewrite_pickle(small, source / "v_a.pt", old, new)  # claims 2**31 - 1 elements (8 GiB)
    line = _one_line(_import(source, tmp_path / "f.h5"))
    assert line.startswith(f"img-extract: error: {source / 'v_a.pt'} is not a readable PyTorch file") and why in line


def test_a_pt_file_with_compressed_records_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(torch.zeros(4), plain)
    source = tmp_path / "released"
    source.mkdir()
    with zipfile.ZipFile(plain) as archive, zipfile.ZipFile(source / "v_a.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for info in archive.infolist():
            out.writestr(info.filename, archive.read(info.filename))
    with pytest.raises(StoreCorruptError, match=r"v_a\.pt: its record .* is compressed or claims"):
        import_img(source, tmp_path / "f.h5", "x", None)


def test_a_pt_file_of_the_legacy_format_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "released"
    source.mkdir()
    legacy = source / "v_a.pt"
    torch.save(torch.zeros(4), legacy, _use_new_zipfile_serialization=False)
    data = bytearray(legacy.read_bytes())  # its storage's size field, read and allocated before the data
    data[-24:-16] = struct.pack("<q", 2**40)
    legacy.write_bytes(bytes(data))
    line = _one_line(_import(source, tmp_path / "f.h5"))
    assert "not a PyTorch file in torch's zip format (torch >= 1.6)" in line and "save the tensors again" in line


def test_a_pt_file_that_holds_no_tensor_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "released"
    source.mkdir()
    torch.save({"features": torch.ones(2, 4)}, source / "v_a.pt")
    line = _one_line(_import(source, tmp_path / "f.h5"))
    assert "v_a.pt: holds a dict, not a [T, D] feature tensor" in line
    listing = tmp_path / "one.pt"
    torch.save([torch.ones(2, 4)], listing)
    assert "holds a list, not a dict of video id -> tensor" in _one_line(_import(listing, tmp_path / "g.h5"))
