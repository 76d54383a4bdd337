"""VGGish against the torchvggish golden vectors (tests/data/golden/vggish), fed through the product's path: the
golden waveform as a video's soundtrack -> probe -> ffmpeg decode -> audio windows -> front end -> network ->
PCA / 8-bit post-processor. Plus the edges of that path, the post-processor with Google's real PCA parameters,
and the checkpoint errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core import cpu
from extract.core.errors import MissingWeightsError
from extract.media.decode import iter_audio
from extract.media.probe import probe
from extract.models import ExtractorOptions, build_extractor
from extract.models.presets import VGGISH, VGGISH_QUANTIZED
from extract.models.published import VGGishExtractor
from extract.models.vggish import VGGish, VGGishPostprocessor, load_pca_params, load_vggish_checkpoint
from tests.golden import golden_arrays, load_npz
from tests.testdata import GOOGLE_VGGISH_PCA as GOOGLE_PCA
from tests.videos import make_video_with_waveform

WEIGHTS_SEED = 201
PCA_KEYS = ("pca_eigen_vectors", "pca_means")
SAMPLE_RATE = 16000


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return load_npz("vggish", "expected.npz")


@pytest.fixture(scope="module")
def golden_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden weights saved like the published files."""
    arrays = golden_arrays("vggish", WEIGHTS_SEED)
    folder = tmp_path_factory.mktemp("vggish-golden")
    torch.save(
        {k: torch.from_numpy(v) for k, v in arrays.items() if k not in PCA_KEYS}, folder / VGGISH_QUANTIZED.weights
    )
    torch.save({k: torch.from_numpy(arrays[k]) for k in PCA_KEYS}, folder / VGGISH_QUANTIZED.extra_weights[0])
    return folder


def _extractor(folder: Path, backend: str = "torch") -> VGGishExtractor:
    options = ExtractorOptions(device=torch.device("cpu"), weights_dir=folder, verify_weights=False, backend=backend)
    built = build_extractor(VGGISH_QUANTIZED, options)
    assert isinstance(built, VGGishExtractor)
    return built


@pytest.fixture(scope="module")
def extractor(golden_weights: Path) -> VGGishExtractor:
    """The vggish-quantized extractor with the golden weights, on torch."""
    return _extractor(golden_weights)


@pytest.fixture(scope="module")
def golden_soundtrack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    inputs = load_npz("vggish", "inputs.npz")
    assert int(inputs["sample_rate"]) == SAMPLE_RATE
    return make_video_with_waveform(tmp_path_factory.mktemp("vggish") / "golden.mkv", inputs["waveform"], SAMPLE_RATE)


def product_windows(extractor: VGGishExtractor, video: Path) -> np.ndarray:
    """What the run feeds the model for one video: its decoded audio cut by the extractor's own windower."""
    meta = probe(video)
    windower = extractor.windower()
    assert extractor.audio_sampling is not None
    units = [windower.push(chunk) for chunk in iter_audio(meta, extractor.audio_sampling)] + [windower.finish()]
    return np.concatenate([u.inputs for u in units if u is not None])


@pytest.fixture(scope="module")
def golden_outputs(extractor: VGGishExtractor, expected, golden_soundtrack) -> dict[str, np.ndarray]:
    """Each stage fed the golden input of that stage, plus the whole chain from the golden soundtrack."""
    windows = product_windows(extractor, golden_soundtrack)
    with torch.no_grad():
        raw = extractor.model(torch.from_numpy(expected["examples"]))
        return {
            "examples": extractor.examples(windows).numpy(),
            "embedding_raw": raw.numpy(),
            "pca_applied": extractor.postprocessor.pca(raw).numpy(),
            "embedding_postprocessed": extractor.postprocessor(raw).numpy(),
            "end_to_end": extractor.embed(windows),
        }


def _report(name: str, ours: np.ndarray, reference: np.ndarray) -> None:
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64)).max()
    print(f"vggish golden {name}: shape {ours.shape}, max |diff| {diff:.3g}")


def test_examples_match_golden(golden_outputs, expected):
    _report("examples", golden_outputs["examples"], expected["examples"])
    assert golden_outputs["examples"].dtype == np.float32
    np.testing.assert_allclose(golden_outputs["examples"], expected["examples"], rtol=0, atol=1e-4)


def test_raw_embeddings_match_golden(golden_outputs, expected):
    _report("embedding_raw", golden_outputs["embedding_raw"], expected["embedding_raw"])
    np.testing.assert_allclose(golden_outputs["embedding_raw"], expected["embedding_raw"], rtol=1e-4, atol=1e-4)


def test_pca_output_matches_golden(golden_outputs, expected):
    _report("pca_applied", golden_outputs["pca_applied"], expected["pca_applied"])
    np.testing.assert_allclose(golden_outputs["pca_applied"], expected["pca_applied"], rtol=1e-4, atol=1e-4)


def _assert_quantised_match_except_at_rounding_ties(ours: np.ndarray, expected: dict[str, np.ndarray]) -> None:
    reference = expected["embedding_postprocessed"]
    assert ours.dtype == np.uint8
    quantiser_input = (np.clip(expected["pca_applied"].astype(np.float64), -2, 2) + 2) * 63.75
    near_tie = np.abs(quantiser_input - np.floor(quantiser_input) - 0.5) < 0.01
    diff = np.abs(ours.astype(np.float64) - reference)
    assert np.all(diff[~near_tie] == 0)
    assert np.all(diff[near_tie] <= 1)


def test_quantised_embeddings_match_golden_except_at_rounding_ties(golden_outputs, expected):
    _report("embedding_postprocessed", golden_outputs["embedding_postprocessed"], expected["embedding_postprocessed"])
    _assert_quantised_match_except_at_rounding_ties(golden_outputs["embedding_postprocessed"], expected)


def test_golden_soundtrack_end_to_end_on_each_backend(golden_weights, golden_soundtrack, expected, backend):
    """Decode -> windows -> front end -> network on `backend` -> PCA + 8 bits: the golden uint8 rows."""
    extractor = _extractor(golden_weights, backend)
    assert extractor.backend_runtime()["backend"] == backend
    ours = extractor.embed(product_windows(extractor, golden_soundtrack))
    _report(f"end_to_end on {backend}", ours, expected["embedding_postprocessed"])
    _assert_quantised_match_except_at_rounding_ties(ours, expected)


@pytest.mark.skipif(not cpu.native_bf16(), reason="--precision bf16 runs only on a CPU with bf16 instructions")
def test_bf16_golden_soundtrack_is_the_documented_distance_from_fp32(
    golden_weights, golden_soundtrack, expected, backend
):
    """--precision bf16 through the product path on each backend: the raw embeddings against the fp32 golden, and
    how many of the 8-bit values flip (docs/performance.md)."""
    options = ExtractorOptions(torch.device("cpu"), golden_weights, "bf16", verify_weights=False, backend=backend)
    raw_extractor = build_extractor(VGGISH, options)
    quantised_extractor = build_extractor(VGGISH_QUANTIZED, options)
    assert raw_extractor.backend_runtime()["backend"] == quantised_extractor.backend_runtime()["backend"] == backend
    windows = product_windows(quantised_extractor, golden_soundtrack)
    raw = raw_extractor.embed(windows).astype(np.float64)
    want = expected["embedding_raw"].astype(np.float64)
    diff = np.abs(raw - want).max()
    cosine = ((raw * want).sum(1) / np.linalg.norm(raw, axis=1) / np.linalg.norm(want, axis=1)).min()
    reference = expected["embedding_postprocessed"].astype(np.int64)
    steps = np.abs(quantised_extractor.embed(windows).astype(np.int64) - reference)
    flipped = int((steps > 0).sum())
    print(
        f"\nVGGish bf16 on {backend} vs the fp32 golden: raw max |diff| {diff:.3g} "
        f"(max |value| {np.abs(want).max():.3g}), cosine min {cosine:.6f}; "
        f"8-bit: {flipped} of {steps.size} flipped, max {steps.max()} steps"
    )
    assert 0 < diff < 0.2 and cosine > 0.999 and steps.max() <= 2


def _random_embeddings(rows: int = 16) -> torch.Tensor:
    """Non-negative, like post-ReLU embeddings, and spread wide enough that some PCA outputs get clipped."""
    return 2 * torch.rand(rows, 128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("stored_as", ["numpy", "tensor"])
def test_google_npz_and_torchvggish_pth_give_identical_results(tmp_path, stored_as):
    with np.load(GOOGLE_PCA) as npz:
        arrays = {key: npz[key] for key in PCA_KEYS}
    convert = (lambda a: a) if stored_as == "numpy" else torch.from_numpy
    torch.save({key: convert(array) for key, array in arrays.items()}, tmp_path / "vggish_pca_params.pth")
    from_npz, from_pth = load_pca_params(GOOGLE_PCA), load_pca_params(tmp_path / "vggish_pca_params.pth")
    embeddings = _random_embeddings()
    assert torch.equal(from_npz.pca(embeddings), from_pth.pca(embeddings))
    assert torch.equal(from_npz(embeddings), from_pth(embeddings))


def test_postprocessor_maps_the_pca_mean_to_mid_scale():
    postprocessor = load_pca_params(GOOGLE_PCA)
    quantised = postprocessor(postprocessor.pca_means[None].clone())
    # PCA output 0 -> (0 + 2) * 63.75 = 127.5, a tie that torch.round sends to the even 128.
    assert quantised.dtype == torch.uint8 and torch.all(quantised == 128)


def test_postprocessor_keeps_a_single_row_two_dimensional():
    assert load_pca_params(GOOGLE_PCA)(_random_embeddings(1)).shape == (1, 128)


def _tone_video(path: Path, sample_rate: int, seconds: float = 3.5, channels: int = 1) -> Path:
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)
    return make_video_with_waveform(path, np.repeat(tone[:, None], channels, axis=1), sample_rate)


@pytest.mark.parametrize("seconds", [0.3, 0.96])
def test_audio_shorter_than_one_example_gives_one_zero_padded_example(extractor, tmp_path, seconds):
    # The reference gives none (an example needs 15,600 samples, 0.975 s); the product pads one (README, presets).
    windows = product_windows(extractor, _tone_video(tmp_path / "short.mkv", SAMPLE_RATE, seconds))
    assert windows.shape == (1, 15600)
    length = round(seconds * SAMPLE_RATE)
    assert np.abs(windows[0, :length]).max() > 0.1 and not windows[0, length:].any()


def test_stereo_examples_are_those_of_the_channel_mean(extractor, tmp_path):
    """torchvggish averages the channels; ffmpeg's own stereo-to-mono would add 3 dB (0.7071 * (L + R))."""
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 1000 * t + 1.0)
    stereo = make_video_with_waveform(tmp_path / "stereo.mkv", np.stack([left, right], axis=1), SAMPLE_RATE)
    mono = make_video_with_waveform(tmp_path / "mean.mkv", (left + right) / 2, SAMPLE_RATE)
    from_stereo = extractor.examples(product_windows(extractor, stereo))
    from_mean = extractor.examples(product_windows(extractor, mono))
    print(f"\nvggish stereo vs channel mean: max |diff| {(from_stereo - from_mean).abs().max():.3g} (log-mel)")
    torch.testing.assert_close(from_stereo, from_mean, rtol=0, atol=1e-4)


def test_silent_audio_gives_the_log_offset_everywhere(extractor, tmp_path):
    video = make_video_with_waveform(tmp_path / "silent.mkv", np.zeros(2 * SAMPLE_RATE), SAMPLE_RATE)
    examples = extractor.examples(product_windows(extractor, video))
    assert examples.shape == (2, 1, 96, 64)
    assert torch.all(torch.isfinite(examples)) and torch.all(examples == np.float32(np.log(0.01)))


def _one_line_error(loader, path: Path) -> str:
    with pytest.raises(MissingWeightsError) as error:
        loader(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_checkpoint_with_wrong_keys_and_shapes_gives_one_line(tmp_path):
    path = tmp_path / "vggish.pth"
    torch.save({"conv1.weight": torch.zeros(64, 1, 3, 3), "embeddings.4.weight": torch.zeros(64, 4096)}, path)
    message = _one_line_error(load_vggish_checkpoint, path)
    assert "features.0.weight" in message and "conv1.weight" in message and "embeddings.4.weight" in message


def test_truncated_checkpoint_gives_one_line(tmp_path):
    path = tmp_path / "vggish.pth"
    torch.save(VGGish().features.state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _one_line_error(load_vggish_checkpoint, path)


def test_pca_params_with_wrong_shape_give_one_line(tmp_path):
    path = tmp_path / "vggish_pca_params.npz"
    np.savez(path, pca_eigen_vectors=np.zeros((64, 128)), pca_means=np.zeros(128))
    assert "pca_eigen_vectors" in _one_line_error(load_pca_params, path)


@pytest.mark.parametrize("suffix", [".npz", ".pth"])
def test_truncated_pca_params_give_one_line(tmp_path, suffix):
    path = tmp_path / f"vggish_pca_params{suffix}"
    state = VGGishPostprocessor().state_dict()
    if suffix == ".npz":
        np.savez(path, **{key: value.numpy() for key, value in state.items()})
    else:
        torch.save(state, path)
    path.write_bytes(path.read_bytes()[:100])
    _one_line_error(load_pca_params, path)
