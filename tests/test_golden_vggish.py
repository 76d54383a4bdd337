"""VGGish against the torchvggish golden vectors (tests/data/golden/vggish), plus the edges of its front end,
its post-processor with Google's real PCA parameters, and its checkpoint errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from extract.errors import MissingWeightsError
from extract.models.vggish import (
    SAMPLE_RATE,
    VGGish,
    VGGishPostprocessor,
    load_pca_params,
    load_vggish_checkpoint,
    mel_weight_matrix,
    waveform_to_examples,
)
from tests.golden import GOLDEN as GOLDEN_ROOT
from tests.golden import golden_arrays
from tests.testdata import GOOGLE_VGGISH_PCA as GOOGLE_PCA

GOLDEN = GOLDEN_ROOT / "vggish"
WEIGHTS_SEED = 201
PCA_KEYS = ("pca_eigen_vectors", "pca_means")


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "expected.npz") as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def golden_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The golden weights saved like the published files: the VGG state dict and the PCA dict, as two .pth."""
    arrays = golden_arrays("vggish", WEIGHTS_SEED)
    folder = tmp_path_factory.mktemp("vggish-golden")
    vgg, pca = folder / "vggish.pth", folder / "vggish_pca_params.pth"
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items() if k not in PCA_KEYS}, vgg)
    torch.save({k: torch.from_numpy(arrays[k]) for k in PCA_KEYS}, pca)
    return vgg, pca


@pytest.fixture(scope="module")
def golden_outputs(golden_files: tuple[Path, Path], expected: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each stage fed the golden input of that stage, plus the whole chain from the waveform."""
    model, postprocessor = load_vggish_checkpoint(golden_files[0]), load_pca_params(golden_files[1])
    with np.load(GOLDEN / "inputs.npz") as npz:
        waveform, sample_rate = npz["waveform"], int(npz["sample_rate"])
    with torch.no_grad():
        examples = waveform_to_examples(waveform, sample_rate)
        raw = model(torch.from_numpy(expected["examples"]))
        return {
            "examples": examples.numpy(),
            "embedding_raw": raw.numpy(),
            "pca_applied": postprocessor.pca(raw).numpy(),
            "embedding_postprocessed": postprocessor(raw).numpy(),
            "end_to_end": postprocessor(model(examples)).numpy(),
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


@pytest.mark.parametrize("output", ["embedding_postprocessed", "end_to_end"])
def test_quantised_embeddings_match_golden_except_at_rounding_ties(golden_outputs, expected, output):
    ours, reference = golden_outputs[output], expected["embedding_postprocessed"]
    _report(output, ours, reference)
    assert ours.dtype == np.uint8
    quantiser_input = (np.clip(expected["pca_applied"].astype(np.float64), -2, 2) + 2) * 63.75
    near_tie = np.abs(quantiser_input - np.floor(quantiser_input) - 0.5) < 0.01
    diff = np.abs(ours.astype(np.float64) - reference)
    assert np.all(diff[~near_tie] == 0)
    assert np.all(diff[near_tie] <= 1)


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


def _tones(sample_rate: int, seconds: float = 3.5) -> np.ndarray:
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.0, 0.3, 0.96])
def test_audio_shorter_than_one_example_gives_zero_examples(seconds):
    # No padding: an example needs 96 frames = 400 + 95 * 160 samples (0.975 s); 0.96 s makes only 94 frames.
    examples = waveform_to_examples(np.zeros(round(seconds * SAMPLE_RATE), np.float32), SAMPLE_RATE)
    assert examples.shape == (0, 1, 96, 64) and examples.dtype == torch.float32


def test_first_example_needs_15600_samples():
    counts = [len(waveform_to_examples(_tones(SAMPLE_RATE)[:n], SAMPLE_RATE)) for n in (15599, 15600)]
    assert counts == [0, 1]


def test_silent_audio_gives_the_log_offset_everywhere():
    examples = waveform_to_examples(np.zeros(2 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    assert examples.shape == (2, 1, 96, 64)
    assert torch.all(torch.isfinite(examples)) and torch.all(examples == np.float32(np.log(0.01)))


def test_channels_are_averaged():
    mono = _tones(SAMPLE_RATE)
    stereo = np.stack([mono, np.zeros_like(mono)], axis=1)
    assert torch.equal(waveform_to_examples(stereo, SAMPLE_RATE), waveform_to_examples(mono / 2, SAMPLE_RATE))


@pytest.mark.parametrize(("sample_rate", "max_hz", "atol"), [(8000, 3000.0, 0.01), (48000, 8000.0, 0.05)])
def test_other_sample_rates_are_resampled_to_16k(sample_rate, max_hz, atol):
    native = waveform_to_examples(_tones(SAMPLE_RATE), SAMPLE_RATE)
    resampled = waveform_to_examples(_tones(sample_rate), sample_rate)
    assert resampled.shape == native.shape == (3, 1, 96, 64)
    bin_hz = torch.linspace(0, SAMPLE_RATE / 2, 257, dtype=torch.float64)
    bands = mel_weight_matrix()[bin_hz > max_hz].sum(dim=0) == 0  # 8 kHz audio has nothing above 4 kHz
    torch.testing.assert_close(resampled[..., bands], native[..., bands], rtol=0, atol=atol)


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
