"""SlowFast R50 8x8 and HERO's clips against the HERO_Video_Feature_Extractor golden (tests/data/golden/slowfast).

The golden holds four small videos (64x64 frames, the reference's head pooling set to the 2x2 res5 map) that
exercise the clip rule at 30, 25 and 60 fps, with 2-s and 3/2-s clips and a duration cut, and one at the real size
(70 frames of 224x224, two clips) that goes through the product path: a lossless video -> probe -> ffmpeg decode ->
the preset's clips -> the extractor.
"""

from __future__ import annotations

import pickle
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core.errors import MissingWeightsError
from extract.media.decode import FrameBatch, iter_frames
from extract.media.probe import probe
from extract.models import ExtractorOptions, build_extractor
from extract.models.hero_clips import ClipRule, ClipSource, HeroClips
from extract.models.presets import SLOWFAST
from extract.models.slowfast import BLOB_TABLE, SlowFastR50, load_slowfast_checkpoint, normalize_clips
from tests.golden import golden_arrays, load_npz
from tests.videos import encode_frames

WEIGHTS_SEED = 501
ATOL = RTOL = 1e-4
SMALL = ("small_a", "small_b", "small_c", "small_d")
# the reference model's stage outputs (video_model_builder.SlowFastModel attributes) -> ours
STAGES = {
    "s1": "stem",
    "s1_fuse": "stem_fused",
    "s2": "res2",
    "s2_fuse": "res2_fused",
    "s3": "res3",
    "s3_fuse": "res3_fused",
    "s4": "res4",
    "s4_fuse": "res4_fused",
    "s5": "res5",
}


@pytest.fixture(scope="module")
def blobs() -> dict[str, np.ndarray]:
    """The golden weights under the published checkpoint's blob names, in spec order."""
    return golden_arrays("slowfast", WEIGHTS_SEED)


@pytest.fixture(scope="module")
def model(blobs: dict[str, np.ndarray]) -> SlowFastR50:
    return load_slowfast_checkpoint(blobs)


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return load_npz("slowfast", "inputs.npz")


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return load_npz("slowfast", "expected.npz")


@pytest.fixture(autouse=True, scope="module")
def two_threads():  # type: ignore[no-untyped-def]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def cut_clips(inputs: dict[str, np.ndarray], case: str, chunk: int = 37) -> tuple[np.ndarray, np.ndarray]:
    """A golden video's frames streamed through HeroClips in chunks, as the run feeds it: (clips, spans)."""
    frames = inputs[f"{case}/frames_uint8"]
    rule = ClipRule(clip_seconds=Fraction(str(inputs[f"{case}/clip_len"])))
    source = ClipSource(int(inputs[f"{case}/fps"]), float(inputs[f"{case}/duration"]))
    windower = HeroClips(rule, source)
    units = []
    for first in range(0, len(frames), chunk):
        data = frames[first : first + chunk]
        pts = (first + np.arange(len(data))) / 30
        units.append(windower.push(FrameBatch(data, pts, np.full(len(data), 1 / 30))))
        assert len(windower._frames) <= rule.clip_frames + rule.frame_rate + chunk  # bounded buffer
    units = [u for u in [*units, windower.finish()] if u is not None]
    return np.concatenate([u.inputs for u in units]), np.concatenate([u.spans for u in units])


def _assert_close(got: np.ndarray, want: np.ndarray, key: str, rtol: float = RTOL) -> float:
    assert got.shape == want.shape, f"{key}: shape {got.shape} vs expected {want.shape}"
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    assert np.allclose(got, want, atol=ATOL, rtol=rtol), f"{key}: max |diff| {diff:.3g}"
    return diff


def _assert_float16_rounding_of(
    stored: np.ndarray, want: np.ndarray, key: str, ours: np.ndarray, theirs: np.ndarray
) -> float:
    """float16 rows equal to the reference's float16 rows, but where the float32 rows differ (the noise the float32
    tests allow: other CPUs' kernels sum in other orders): there, at most one float16 step plus that difference
    (tiny values have tiny float16 steps, so a 1e-7 difference can cross two of them)."""
    assert stored.dtype == np.float16 and stored.shape == want.shape, key
    np.testing.assert_array_equal(stored, ours.astype(np.float16))  # our rows are our float32 rows, rounded
    gap = np.abs(stored.astype(np.float64) - want.astype(np.float64))
    allowed = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64) + np.abs(ours - theirs.astype(np.float64))
    assert (gap <= allowed).all(), f"{key}: {int((gap > allowed).sum())} values beyond rounding of the float32 noise"
    assert (gap > 0).mean() < 1e-2, f"{key}: {(gap > 0).mean():.2%} of the values differ"  # seen: 0.17%
    return float(gap.max())


@pytest.fixture(scope="module")
def small_clips(inputs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {case: cut_clips(inputs, case) for case in SMALL}


@pytest.fixture(scope="module")
def small_features(model, small_clips) -> dict[str, np.ndarray]:
    """Every small clip through the network in one batch, split back per video."""
    clips = np.concatenate([small_clips[case][0] for case in SMALL])
    with torch.inference_mode():
        features = model.extract_features(normalize_clips(torch.from_numpy(clips))).numpy()
    counts = np.cumsum([len(small_clips[case][0]) for case in SMALL])[:-1]
    return dict(zip(SMALL, np.split(features, counts), strict=True))


@pytest.mark.parametrize("case", SMALL)
def test_clips_hold_the_frames_the_reference_samples(inputs, expected, small_clips, case) -> None:
    clips, _ = small_clips[case]
    index = expected[f"{case}/frame_index"]  # (clips, 32) source frame of each frame the reference model saw
    np.testing.assert_array_equal(clips, inputs[f"{case}/frames_uint8"][index])


@pytest.mark.parametrize("case", SMALL)
def test_features_match_the_reference_implementation(expected, small_features, case) -> None:
    diff = _assert_close(small_features[case], expected[f"{case}/features"], f"{case} features")
    print(f"\nSlowFast {case} features: max |diff| {diff:.3g}")


@pytest.mark.parametrize("case", SMALL)
def test_float16_rows_match_what_the_reference_stores(expected, small_features, case) -> None:
    stored = torch.from_numpy(small_features[case]).half().numpy()  # what SlowFastExtractor.embed returns
    want, theirs = expected[f"{case}/stored"], expected[f"{case}/features"]
    diff = _assert_float16_rounding_of(stored, want, f"{case} stored", small_features[case], theirs)
    print(f"\nSlowFast {case} float16 rows: max |diff| {diff:.3g}")


def test_kinetics_probabilities_match_the_reference_head(model, expected, small_clips) -> None:
    with torch.inference_mode():
        probabilities = model(normalize_clips(torch.from_numpy(small_clips["small_a"][0]))).numpy()
    want = expected["small_a/probabilities"]
    assert probabilities.shape == want.shape == (2, 400)
    relative = float(np.max(np.abs(probabilities / want - 1)))
    assert relative < 1e-4, f"probabilities: max relative diff {relative:.3g}"
    print(f"\nSlowFast probabilities: max relative diff {relative:.3g}")


def test_every_stage_matches_the_reference_in_mean_and_shape(model, expected, small_clips) -> None:
    with torch.inference_mode():
        x = normalize_clips(torch.from_numpy(small_clips["small_a"][0]))
        got = {
            name: (
                slow.mean(dim=(2, 3, 4)).numpy(),
                tuple(slow.shape[1:]),
                fast.mean(dim=(2, 3, 4)).numpy(),
                tuple(fast.shape[1:]),
            )
            for name, slow, fast in model.iter_stages(x)
        }
    assert list(got) == list(STAGES.values())
    for reference, ours in STAGES.items():
        slow_mean, slow_shape, fast_mean, fast_shape = got[ours]
        assert slow_shape == tuple(expected[f"small_a/shape/{reference}/slow"]), ours
        assert fast_shape == tuple(expected[f"small_a/shape/{reference}/fast"]), ours
        _assert_close(slow_mean, expected[f"small_a/stage_mean/{reference}/slow"], f"{ours} slow")
        _assert_close(fast_mean, expected[f"small_a/stage_mean/{reference}/fast"], f"{ours} fast")


def test_spans_cover_the_frames_each_clip_holds(small_clips) -> None:
    # small_d: 100 frames in 3/2-s clips; the third clip is seconds 3-3.33 and repeats of its last second
    np.testing.assert_allclose(small_clips["small_d"][1], [[0, 1.5], [1.5, 3.0], [3.0, 100 / 30]])
    # small_c: 125 frames but a 3.9-s stream: ceil(3.9 / 2) = 2 clips, the third (frames 120-124) is cut
    np.testing.assert_allclose(small_clips["small_c"][1], [[0, 2], [2, 4]])


# --- the published checkpoint ----------------------------------------------------------------------------------


def test_every_blob_maps_onto_one_tensor_of_the_network(blobs) -> None:
    assert set(blobs) == set(BLOB_TABLE)  # the golden spec holds exactly the checkpoint's tensors
    keys = {k for k in SlowFastR50().state_dict() if not k.endswith("num_batches_tracked")}
    assert sorted(BLOB_TABLE.values()) == sorted(keys)


def test_loaded_tensors_are_the_blobs_unchanged(model, blobs) -> None:
    state = model.state_dict()
    assert all(np.array_equal(state[BLOB_TABLE[name]].numpy(), value) for name, value in blobs.items())
    assert not model.training


class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 `str` (BINSTRING), as the Caffe2-era checkpoint files hold their arrays' data."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _write_caffe2(path: Path, blobs: dict[str, object], python2: bool = True) -> Path:
    with open(path, "wb") as f:
        (_Python2Pickler(f, protocol=2) if python2 else pickle.Pickler(f, protocol=2)).dump({"blobs": blobs})
    return path


@pytest.fixture(scope="module")
def weights_dir(blobs, tmp_path_factory) -> Path:
    """SLOWFAST_8x8_R50.pkl as the model zoo has it: a Python 2 pickle of the blobs and the optimizer's state."""
    folder = tmp_path_factory.mktemp("slowfast")
    optimizer = {
        "res2_0_branch2a_w_momentum": np.zeros((64, 80, 1, 1, 1), np.float32),
        "lr": np.array([0.1]),
        "model_iter": np.array([1000]),
    }
    _write_caffe2(folder / SLOWFAST.weights, {**blobs, **optimizer})
    return folder


def test_a_python2_caffe2_pickle_with_optimizer_state_loads(weights_dir, blobs) -> None:
    loaded = load_slowfast_checkpoint(weights_dir / SLOWFAST.weights).state_dict()
    for name in ("conv1_w", "t_res4_5_branch2c_bn_subsample_bn_riv", "pred_b"):
        assert torch.equal(loaded[BLOB_TABLE[name]], torch.from_numpy(blobs[name])), name


def _one_line_error(path: Path) -> str:
    with pytest.raises(MissingWeightsError) as info:
        load_slowfast_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_wrong_shape_and_an_unknown_blob_are_reported_in_one_line(blobs, tmp_path) -> None:
    changed = {**blobs, "pred_w": np.zeros((174, 2304), np.float32), "res6_0_branch2a_w": np.zeros(1, np.float32)}
    message = _one_line_error(_write_caffe2(tmp_path / "wrong.pkl", changed, python2=False))
    assert "shape pred_w (174, 2304) where the network has (400, 2304)" in message
    assert "unexpected res6_0_branch2a_w" in message


def test_a_pickle_that_asks_for_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": subprocess.Popen}}))
    assert "asks for subprocess.Popen" in _one_line_error(path)


def test_a_pytorch_file_is_not_taken_for_the_caffe2_checkpoint(tmp_path) -> None:
    path = tmp_path / "SLOWFAST_8x8_R50.pkl"
    torch.save({"conv1_w": torch.zeros(1)}, path)
    assert "could not be read as a Caffe2 pickle" in _one_line_error(path)
    path.write_bytes(pickle.dumps({"model_state": {}}))
    assert "holds no dict named 'blobs'" in _one_line_error(path)


# --- the real-size golden through the product path ---------------------------------------------------------------


@pytest.mark.slow
def test_golden_video_through_decode_clips_and_extractor(weights_dir, inputs, expected, tmp_path, monkeypatch):
    """The real-size golden frames as a lossless 30-fps video -> probe -> ffmpeg -> `slowfast`'s clips -> embed."""
    frames = inputs["full/frames_uint8"]
    video = tmp_path / "golden.mkv"
    encode_frames(video, frames, "30")
    extractor = build_extractor(SLOWFAST, ExtractorOptions(device=torch.device("cpu"), weights_dir=weights_dir))
    stream = probe(video)
    windower = extractor.windower()
    windower.start(stream)
    assert extractor.frame_sampling is not None
    units = [windower.push(batch) for batch in iter_frames(stream, extractor.frame_sampling)]
    units = [u for u in [*units, windower.finish()] if u is not None]
    clips, spans = np.concatenate([u.inputs for u in units]), np.concatenate([u.spans for u in units])
    np.testing.assert_array_equal(clips, frames[expected["full/frame_index"]])  # decoded and cut unchanged
    np.testing.assert_allclose(spans, [[0, 2], [2, 70 / 30]])

    seen: list[torch.Tensor] = []  # the float32 rows that embed rounds to float16
    extract_features = extractor.model.extract_features

    def spy(clips: torch.Tensor) -> torch.Tensor:
        seen.append(extract_features(clips))
        return seen[-1]

    monkeypatch.setattr(extractor.model, "extract_features", spy)
    stored = extractor.embed(clips)
    diff = _assert_close(torch.cat(seen).numpy(), expected["full/features"], "full features")
    ours, theirs = torch.cat(seen).numpy(), expected["full/features"]
    stored_diff = _assert_float16_rounding_of(stored, expected["full/stored"], "full stored", ours, theirs)
    print(f"\nSlowFast 224x224 through the product path: max |diff| {diff:.3g} (float32), {stored_diff:.3g} (float16)")
