"""InceptionI3d against the pytorch-i3d golden vectors (tests/data/golden/i3d) and its checkpoint loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core import cpu
from extract.core.errors import MissingWeightsError
from extract.media.decode import iter_frames
from extract.media.probe import probe
from extract.models import ExtractorOptions, build_extractor
from extract.models.i3d import InceptionI3d, MaxPoolSame, load_i3d_checkpoint, pad_same
from extract.models.presets import I3D_ANET_VSLNET
from tests.golden import GOLDEN, golden_tensors, load_npz
from tests.videos import encode_frames

I3D_GOLDEN = GOLDEN / "i3d"
WEIGHTS_SEED = 101
ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def golden_state_dict() -> dict[str, torch.Tensor]:
    """The golden weights under the published checkpoint's key names (no num_batches_tracked)."""
    return golden_tensors("i3d", WEIGHTS_SEED)


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(I3D_GOLDEN / "expected.npz") as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def outputs(golden_state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """One pass of the golden clip: features, logits and every endpoint's mean over (T, H, W) and shape."""
    with np.load(I3D_GOLDEN / "inputs.npz") as npz:
        frames = npz["frames_uint8"]
    clip = ((frames / 255.0) * 2 - 1).astype(np.float32)  # float64 scaling, then one cast (README "Input")
    x = torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)[None]))  # (T,H,W,C) -> (N,C,T,H,W)

    model = InceptionI3d(num_classes=400)
    model.load_state_dict(golden_state_dict, strict=True)
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            got = {
                "features": model.extract_features(x).numpy(),
                "logits": model(x).numpy(),
            }
            for name, endpoint in model.iter_endpoints(x):
                got[f"endpoint_mean/{name}"] = endpoint.mean(dim=(2, 3, 4))[0].numpy()
                got[f"endpoint_shape/{name}"] = np.array(endpoint.shape, dtype=np.int64)
    finally:
        torch.set_num_threads(threads)
    return got


def _assert_close(got: np.ndarray, want: np.ndarray, key: str) -> float:
    assert got.shape == want.shape, f"{key}: shape {got.shape} vs expected {want.shape}"
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    assert np.allclose(got, want, atol=ATOL, rtol=RTOL), f"{key}: max |diff| {diff:.3g}"
    return diff


def test_features_match_the_reference_implementation(outputs, expected):
    diff = _assert_close(outputs["features"], expected["features"], "features")
    print(f"\nI3D features: max |diff| {diff:.3g}")


def test_logits_match_the_reference_implementation(outputs, expected):
    diff = _assert_close(outputs["logits"], expected["logits"], "logits")
    print(f"\nI3D logits: max |diff| {diff:.3g}")


def test_every_endpoint_matches_the_reference_in_mean_and_shape(outputs, expected):
    endpoint_keys = sorted(k for k in expected if k.startswith("endpoint_"))
    assert endpoint_keys, "expected.npz has no endpoint diagnostics"
    assert set(endpoint_keys) == {k for k in outputs if k.startswith("endpoint_")}
    for key in endpoint_keys:
        if key.startswith("endpoint_shape/"):
            assert tuple(outputs[key]) == tuple(expected[key]), key
        else:
            _assert_close(outputs[key], expected[key], key)


def test_temporal_size_follows_the_stride_rule():
    model = InceptionI3d(num_classes=7).eval()
    with torch.inference_mode():
        logits = model(torch.zeros(2, 3, 24, 224, 224))
    assert logits.shape == (2, 7, 2)  # T = 24 -> T5 = 3 -> t = 2


@pytest.fixture(scope="module")
def imagenet_layout_file(golden_state_dict, tmp_path_factory) -> Path:
    """The golden weights saved like rgb_imagenet.pt: a plain state dict, no num_batches_tracked."""
    path = tmp_path_factory.mktemp("i3d") / "rgb_imagenet.pt"
    torch.save(dict(golden_state_dict), path)
    return path


def test_loader_reads_the_published_layout_and_infers_400_classes(imagenet_layout_file, golden_state_dict):
    model = load_i3d_checkpoint(imagenet_layout_file)
    assert model.num_classes == 400
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in golden_state_dict.items())


def test_loader_infers_157_classes_from_a_charades_head(golden_state_dict, tmp_path):
    state_dict = dict(golden_state_dict)
    state_dict["logits.conv3d.weight"] = torch.zeros(157, 1024, 1, 1, 1)
    state_dict["logits.conv3d.bias"] = torch.zeros(157)
    path = tmp_path / "rgb_charades.pt"
    torch.save(state_dict, path)
    model = load_i3d_checkpoint(path)
    assert model.num_classes == 157
    assert model.logits.conv3d.weight.shape == (157, 1024, 1, 1, 1)


def test_loader_accepts_a_state_dict_saved_by_a_newer_torch_without_counters():
    """An OrderedDict from `state_dict()` carries version metadata; dropping the counters must still load."""
    state_dict = InceptionI3d(num_classes=400).state_dict()
    for key in [k for k in state_dict if k.endswith("num_batches_tracked")]:
        del state_dict[key]
    assert load_i3d_checkpoint(state_dict).num_classes == 400


def _one_line_error(path: Path) -> str:
    """The loader's error for path: one line that names the file."""
    with pytest.raises(MissingWeightsError) as info:
        load_i3d_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_renamed_key_is_reported_in_one_line(golden_state_dict, tmp_path):
    state_dict = dict(golden_state_dict)
    state_dict["Mixed_5c.b0.conv.weight"] = state_dict.pop("Mixed_5c.b0.conv3d.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state_dict, path)
    message = _one_line_error(path)
    assert "missing Mixed_5c.b0.conv3d.weight" in message
    assert "unexpected Mixed_5c.b0.conv.weight" in message


def test_a_wrong_shape_is_reported_in_one_line(golden_state_dict, tmp_path):
    state_dict = dict(golden_state_dict)
    state_dict["Mixed_3b.b1b.conv3d.weight"] = torch.zeros(128, 96, 1, 1, 1)
    path = tmp_path / "wrong_shape.pt"
    torch.save(state_dict, path)
    message = _one_line_error(path)
    assert "Mixed_3b.b1b.conv3d.weight (128, 96, 1, 1, 1)" in message
    assert "(128, 96, 3, 3, 3)" in message


def test_a_truncated_file_is_reported_in_one_line(imagenet_layout_file, tmp_path):
    data = imagenet_layout_file.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    message = _one_line_error(path)
    assert "is not a readable PyTorch file (truncated or damaged); expected published weights: fetch" in message


def test_a_missing_file_is_reported_in_one_line(tmp_path):
    path = tmp_path / "rgb_imagenet.pt"
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_i3d_checkpoint(path)


@pytest.fixture(scope="module")
def golden_video(tmp_path_factory) -> Path:
    """The golden frames as a lossless 224x224 video at 25 fps."""
    frames = load_npz("i3d", "inputs.npz")["frames_uint8"]
    video = tmp_path_factory.mktemp("i3d-video") / "golden.mkv"
    encode_frames(video, frames, "25")
    return video


def _extractor(folder: Path, backend: str = "torch", precision: str = "fp32"):  # type: ignore[no-untyped-def]
    options = ExtractorOptions(torch.device("cpu"), folder, precision, verify_weights=False, backend=backend)
    return build_extractor(I3D_ANET_VSLNET, options)


def _product_windows(extractor, video: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    windower = extractor.windower()
    units = [windower.push(batch) for batch in iter_frames(probe(video), extractor.frame_sampling)]
    return np.concatenate([u.inputs for u in [*units, windower.finish()] if u is not None])


def test_golden_clip_through_the_product_path(imagenet_layout_file, golden_video, expected, backend):
    """The golden frames as a lossless video -> probe -> ffmpeg decode -> i3d-anet-vslnet's frame windows -> I3D,
    on each installed backend (the extractor's own inference form: BatchNorm folded, channels-last input)."""
    extractor = _extractor(imagenet_layout_file.parent, backend)
    assert extractor.backend_runtime()["backend"] == backend  # no silent fallback
    windows = _product_windows(extractor, golden_video)
    np.testing.assert_array_equal(windows, load_npz("i3d", "inputs.npz")["frames_uint8"][None])  # decoded unchanged
    features = extractor.embed(windows)  # (1, 1, 1024)
    diff = _assert_close(features.reshape(1, 1024, 1, 1, 1), expected["features"], "features via decode")
    print(f"\nI3D features through decode and windows on {backend}: max |diff| {diff:.3g}")


@pytest.mark.skipif(not cpu.native_bf16(), reason="--precision bf16 runs only on a CPU with bf16 instructions")
def test_bf16_golden_clip_is_the_documented_distance_from_fp32(imagenet_layout_file, golden_video, expected, backend):
    """--precision bf16 through the product path on each backend, against the fp32 golden (docs/performance.md)."""
    extractor = _extractor(imagenet_layout_file.parent, backend, "bf16")
    assert extractor.backend_runtime()["backend"] == backend
    got = extractor.embed(_product_windows(extractor, golden_video)).reshape(-1).astype(np.float64)
    want = expected["features"].reshape(-1).astype(np.float64)
    diff = np.abs(got - want).max()
    cosine = got @ want / np.linalg.norm(got) / np.linalg.norm(want)
    print(f"\nI3D bf16 on {backend} vs the fp32 golden: max |diff| {diff:.3g}, cosine {cosine:.7f}")
    assert 0 < diff < 0.1 and cosine > 0.999  # bf16 really ran (not 0), within the documented distance


def test_folded_batch_norm_keeps_every_endpoint_and_the_logits(golden_state_dict, expected):
    """The inference form (BatchNorm in the convs, padding inside them) against the goldens, odd sizes too."""
    model = InceptionI3d(num_classes=400)
    model.load_state_dict(golden_state_dict, strict=True)  # the published keys, before folding
    reference = InceptionI3d(num_classes=400)
    reference.load_state_dict(golden_state_dict, strict=True)
    reference.eval()
    model.fold_batch_norm()
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
    with np.load(I3D_GOLDEN / "inputs.npz") as npz:
        x = torch.from_numpy(((npz["frames_uint8"] / 255.0) * 2 - 1).astype(np.float32)).permute(3, 0, 1, 2)[None]
    with torch.inference_mode():
        _assert_close(model(x).numpy(), expected["logits"], "folded logits")
        odd = torch.rand(1, 3, 19, 224, 224) * 2 - 1  # odd T: other "same" paddings in every stride-2 layer
        diff = (model.extract_features(odd) - reference.extract_features(odd)).abs().max().item()
    assert diff < ATOL, f"folded vs unfolded on T = 19: max |diff| {diff:.3g}"


@pytest.mark.parametrize(
    "kernel,stride", [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (1, 1, 1)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2))]
)
def test_max_pools_equal_zero_padded_pooling_on_post_relu_inputs_of_any_size(kernel, stride):
    pool = MaxPoolSame(kernel, stride)
    generator = torch.Generator().manual_seed(0)
    for size in range(2, 14):
        x = torch.relu(torch.randn(1, 2, size, size + 1, size + 3, generator=generator))
        want = torch.nn.functional.max_pool3d(pad_same(x, kernel, stride), kernel, stride)
        assert torch.equal(pool(x), want), f"size {tuple(x.shape[2:])}"


def test_inference_pads_no_copy_but_the_stems(imagenet_layout_file, monkeypatch):
    """One zero-padded copy per forward (the 3-channel input of the stride-2 stem), none in the 60 other layers."""
    from extract.models import i3d

    extractor = _extractor(imagenet_layout_file.parent)
    pads = []
    real_pad = i3d.F.pad
    monkeypatch.setattr(i3d.F, "pad", lambda x, *args, **kwargs: pads.append(x.shape) or real_pad(x, *args, **kwargs))
    extractor.embed(np.zeros((1, 16, 224, 224, 3), np.uint8))
    assert pads == [(1, 3, 16, 224, 224)]


def test_the_clips_reach_the_model_channels_last(imagenet_layout_file):
    """The layout the CPU convolutions are fastest in (1.5x): a refactor that loses it would cost that silently."""
    extractor = _extractor(imagenet_layout_file.parent)
    seen = []
    stem = extractor.model.Conv3d_1a_7x7.conv3d
    stem.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    extractor.embed(np.zeros((2, 16, 224, 224, 3), np.uint8))
    (clips,) = seen
    assert clips.shape == (2, 3, 16 + 5, 224 + 5, 224 + 5)  # "same"-padded for the stride-2 stem
    assert clips.is_contiguous(memory_format=torch.channels_last_3d) and not clips.is_contiguous()
