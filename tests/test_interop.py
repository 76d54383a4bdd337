import json
import os
import pickle
from pathlib import Path

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
