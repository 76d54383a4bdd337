import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from extract.core.errors import StoreCorruptError, UsageError
from extract.store import FeatureStore, StoreWriter, Track, VideoRecord
from extract.store.interop import export_img, import_img, load_array_pickle
from tests.conftest import run_cli


def _spans(n: int, step: float) -> np.ndarray:
    return np.stack([np.arange(n) * step, np.arange(n) * step + step], axis=1)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "feats.h5"
    rng = np.random.default_rng(0)
    writer = StoreWriter(path, {})
    for video_id, rows in (("v_a", 7), ("v_b", 3)):
        tracks = {
            "i3d-charades-vslnet": Track(rng.normal(size=(rows, 1024)).astype(np.float32), _spans(rows, 1.0)),
            "vggish-quantized": Track(
                rng.integers(0, 256, size=(rows + 1, 128), dtype=np.uint8), _spans(rows + 1, 0.96)
            ),
            "panns": Track(rng.normal(size=(2 * rows, 2048)).astype(np.float32), _spans(2 * rows, 0.5)),
        }
        writer.add_video(VideoRecord(video_id, {"has_audio": True}, tracks))
    writer.close()
    return path


def test_export_writes_the_img_layout(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "img"
    export_img(store, out, "i3d-charades-vslnet", "vggish-quantized")
    assert np.load(out / "i3d_video" / "v_a.npy").shape == (7, 1024)
    assert json.loads((out / "feature_shapes_i3d_v.json").read_text()) == {"v_a": 7, "v_b": 3}
    assert json.loads((out / "feature_shapes_a.json").read_text()) == {"v_a": 8, "v_b": 4}
    audio = load_array_pickle(out / "audio" / "VGGish.pickle")
    with FeatureStore(store) as reader:
        np.testing.assert_array_equal(audio["v_b"], reader.track("v_b", "vggish-quantized").features)
    export_img(store, tmp_path / "img2", None, "panns")
    assert np.load(tmp_path / "img2" / "audio" / "v_b.npy").shape == (6, 2048)


def test_export_then_import_round_trips(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "img"
    export_img(store, out, "i3d-charades-vslnet", "vggish-quantized")
    back = tmp_path / "back.h5"
    assert import_img(out / "i3d_video", back, "i3d-released", 1.0) == 2
    assert import_img(out / "audio" / "VGGish.pickle", back, "vggish-released", 0.96) == 2
    with FeatureStore(store) as original, FeatureStore(back) as imported:
        np.testing.assert_array_equal(
            imported.track("v_a", "i3d-released").features, original.track("v_a", "i3d-charades-vslnet").features
        )
        assert imported.track("v_a", "vggish-released").features.dtype == np.uint8
        recipe = imported.provenance("i3d-released")
        assert recipe["imported_from"].endswith("i3d_video") and recipe["weights_sha256"] == "unknown"
        np.testing.assert_allclose(imported.track("v_b", "vggish-released").timestamps[1], [0.96, 1.92])


def test_import_reads_npz_features_and_squeezes_4d_arrays(tmp_path: Path) -> None:
    source = tmp_path / "released"
    source.mkdir()
    np.savez(source / "vid1.npz", features=np.ones((5, 2304), np.float32))
    np.save(source / "vid2.mp4.npy", np.ones((4, 1, 1, 1024), np.float32))
    import_img(source, tmp_path / "f.h5", "released", None)
    with FeatureStore(tmp_path / "f.h5") as store:
        assert store.track("vid1", "released").features.shape == (5, 2304)
        assert store.track("vid2", "released").features.shape == (4, 1024)  # key = text before the first "."
        assert np.isnan(store.track("vid2", "released").timestamps).all()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "VGGish.pickle"
    evil.write_bytes(pickle.dumps({"v": _Exploit()}))
    with pytest.raises(StoreCorruptError, match=r"refused to unpickle.*asks for (posix|os)\.system"):
        load_array_pickle(evil)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    result = run_cli("import-img", evil, "--out", tmp_path / "f.h5", "--feature", "x")
    assert result.returncode == 2 and "refused to unpickle" in result.stderr


def test_a_pickle_of_something_else_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "list.pickle"
    other.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(StoreCorruptError, match="expected a dict of numpy arrays"):
        load_array_pickle(other)


def test_ids_that_cannot_be_file_names_are_refused_on_export(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "f.h5", {})
    writer.add_video(VideoRecord("a/b.c", {}, {"clip": Track(np.ones((2, 4), np.float32), _spans(2, 1.0))}))
    writer.close()
    with pytest.raises(UsageError, match="cannot be an IMG feature file name"):
        export_img(tmp_path / "f.h5", tmp_path / "out", "clip", None)


def test_export_cli(store: Path, tmp_path: Path) -> None:
    result = run_cli("export-img", "--store", store, "--out", tmp_path / "x", "--visual", "i3d-charades-vslnet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x" / "i3d_video" / "v_b.npy").exists()


def test_import_keeps_the_metadata_of_videos_already_in_the_store(store: Path, tmp_path: Path) -> None:
    source = tmp_path / "released"
    source.mkdir()
    np.save(source / "v_a.npy", np.ones((3, 8), np.float32))
    import_img(source, store, "released", None)
    with FeatureStore(store) as after:
        assert after.metadata("v_a")["has_audio"] in (True, 1) and "imported_from" not in after.metadata("v_a")
        assert "i3d-charades-vslnet" in after.feature_names("v_a") and "released" in after.feature_names("v_a")


def test_unreadable_array_files_are_one_line(tmp_path: Path) -> None:
    source = tmp_path / "released"
    source.mkdir()
    (source / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(source / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result = run_cli("import-img", source, "--out", tmp_path / "f.h5", "--feature", "x")
    assert result.returncode == 2 and "not a readable numpy array file" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_released_vggish_pickle_of_float_values_is_stored_quantised_and_read_divided_by_255(tmp_path: Path) -> None:
    from img_model.data.alignment import decode_values

    rng = np.random.default_rng(0)
    released = {"v_a": rng.integers(0, 256, (5, 128)).astype(np.float64), "v_b": np.full((3, 128), 255.0)}
    source = tmp_path / "VGGish.pickle"
    source.write_bytes(pickle.dumps(released))
    assert import_img(source, tmp_path / "feats.h5", "vggish-released", 0.96) == 2
    with FeatureStore(tmp_path / "feats.h5") as store:
        track = store.track("v_a", "vggish-released")
        assert track.features.dtype == np.uint8
        np.testing.assert_allclose(decode_values(track), released["v_a"] / 255, rtol=1e-6)
        assert store.provenance("vggish-released")["quantized"].startswith("uint8")
    scaled = {"v_c": rng.random((4, 128))}  # already divided: kept as it is
    (tmp_path / "scaled").mkdir()
    (tmp_path / "scaled" / "VGGish.pickle").write_bytes(pickle.dumps(scaled))
    import_img(tmp_path / "scaled" / "VGGish.pickle", tmp_path / "scaled.h5", "vggish-scaled", 0.96)
    with FeatureStore(tmp_path / "scaled.h5") as store:
        np.testing.assert_array_equal(store.track("v_c", "vggish-scaled").features, scaled["v_c"])


# --- files whose headers claim more than they hold: refused before numpy allocates ---------------------------

HUGE = (2**22, 2**20)  # float32: 16 TiB, claimed by a file of a few hundred bytes


def _npy_claiming(path: Path, shape: tuple[int, ...], data: bytes = b"\0" * 64) -> Path:
    """An .npy file whose header says `shape` float32 but which holds only `data`."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        handle.write(data)
    return path


class _PickledArray:
    """Pickles as numpy pickles an array (its _reconstruct, then its state), with the shapes a test chooses."""

    def __init__(self, shape: tuple[int, ...], state: tuple[Any, ...] | None = None) -> None:
        self.shape, self.state = shape, state

    def __reduce__(self) -> tuple[Any, ...]:
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, self.shape, b"b"), *([self.state] if self.state else []))


def test_an_npy_whose_header_claims_terabytes_is_one_line_before_any_allocation(tmp_path: Path) -> None:
    """It used to allocate what the header said: a numpy _ArrayMemoryError traceback, exit 1."""
    source = tmp_path / "released"
    source.mkdir()
    np.save(source / "v_a.npy", np.ones((3, 8), np.float32))
    claim = _npy_claiming(source / "v_b.npy", HUGE)
    result = run_cli("import-img", source, "--out", tmp_path / "f.h5", "--feature", "x")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"img-extract: error: {claim}: damaged: its header claims a (4194304, 1048576) float32 array (16.0 TiB) "
        "but it holds 64 bytes of data\n"
    )
    assert not (tmp_path / "f.h5").exists()


def test_an_npz_whose_features_claim_more_than_the_zip_holds_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "released"
    source.mkdir()
    inner = _npy_claiming(tmp_path / "features.npy", HUGE)
    with zipfile.ZipFile(source / "v_a.npz", "w") as archive:
        archive.write(inner, "features.npy")
    with pytest.raises(
        StoreCorruptError,
        match=r"v_a\.npz: damaged: its header claims a \(4194304, 1048576\) "
        r"float32 array \(16\.0 TiB\) but it holds 64 bytes",
    ):
        import_img(source, tmp_path / "f.h5", "x", None)


def test_an_npz_member_that_lies_about_its_size_is_bounded_by_what_deflate_can_make(tmp_path: Path) -> None:
    """A deflated member can grow at most 1032 times: a zip entry claiming 3 GiB from a few hundred bytes is
    refused by its compressed size, not trusted."""
    inner = _npy_claiming(tmp_path / "features.npy", (3 * 2**28,))
    source = tmp_path / "released"
    source.mkdir()
    with zipfile.ZipFile(source / "v_a.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(inner, "features.npy")
    image = bytearray((source / "v_a.npz").read_bytes())
    real = inner.stat().st_size.to_bytes(4, "little")
    claimed = (3 * 2**30 + 128).to_bytes(4, "little")
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central uncompressed size
        at = image.index(signature) + offset
        assert image[at : at + 4] == real
        image[at : at + 4] = claimed
    (source / "v_a.npz").write_bytes(bytes(image))
    with pytest.raises(
        StoreCorruptError,
        match=r"v_a\.npz: damaged: its header claims a \(805306368,\) float32 "
        r"array \(3\.0 GiB\) but it holds \d+\.\d KiB of data",
    ):
        import_img(source, tmp_path / "f.h5", "x", None)
    legit = tmp_path / "legit"
    legit.mkdir()
    np.savez_compressed(legit / "v_z.npz", features=np.zeros((2000, 512), np.float32))  # 4 MB of zeros: ~1000:1
    import_img(legit, tmp_path / "g.h5", "x", None)
    with FeatureStore(tmp_path / "g.h5") as store:
        assert store.track("v_z", "x").features.shape == (2000, 512)


def test_a_pickle_claiming_a_huge_array_is_one_line_before_any_allocation(tmp_path: Path) -> None:
    """It used to allocate the 16 TiB its _reconstruct asked for: a numpy _ArrayMemoryError traceback, exit 1."""
    evil = tmp_path / "VGGish.pickle"
    evil.write_bytes(pickle.dumps({"v_a": _PickledArray((2**44,))}, protocol=4))
    result = run_cli("import-img", evil, "--out", tmp_path / "f.h5", "--feature", "x")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"img-extract: error: {evil}: damaged or not a feature pickle: it claims a (17592186044416,) int8 array "
        f"(16.0 TiB) in a file of {evil.stat().st_size} bytes\n"
    )


def test_a_pickled_array_state_whose_shape_overflows_or_disagrees_with_its_data_is_refused(tmp_path: Path) -> None:
    """numpy sizes a state's shape in C: (2**62, 2**62) overflowed into a bare MemoryError traceback."""
    cases = {
        (2**62, 2**62): r"it claims a \(4611686018427387904, 4611686018427387904\) float32 array \(.*\) with 0 bytes",
        (2**20, 2**10): r"it claims a \(1048576, 1024\) float32 array \(4\.0 GiB\) with 16 bytes of data",
    }
    for shape, message in cases.items():
        state = (1, shape, np.dtype(np.float32), False, b"\0" * (0 if shape[0] == 2**62 else 16))
        evil = tmp_path / "VGGish.pickle"
        evil.write_bytes(pickle.dumps({"v_a": _PickledArray((0,), state)}, protocol=4))
        with pytest.raises(StoreCorruptError, match="damaged or not a feature pickle: " + message):
            load_array_pickle(evil)


def test_the_arrays_of_one_pickle_together_claim_no_more_than_its_size(tmp_path: Path) -> None:
    def claims(each: int) -> bytes:
        pad = np.zeros(1000, np.uint8)  # a real array, so that the claims below are 2-byte ints in the pickle
        return pickle.dumps({"pad": pad, "a": _PickledArray((each,)), "b": _PickledArray((each,))}, protocol=4)

    size = len(claims(1000))
    each = size * 6 // 10  # each alone fits in the file; the two together do not
    evil = tmp_path / "VGGish.pickle"
    evil.write_bytes(claims(each))
    assert evil.stat().st_size == size
    with pytest.raises(StoreCorruptError, match=rf"it claims a \({each},\) int8 array \(.*\) in a file of 1\.\d KiB"):
        load_array_pickle(evil)
    fine = tmp_path / "fine.pickle"
    fine.write_bytes(pickle.dumps({"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 3), np.uint8)}, protocol=4))
    loaded = load_array_pickle(fine)
    assert type(loaded["a"]) is np.ndarray and loaded["b"].shape == (2, 3)
