"""PANNs Cnn14 against the original code (tests/data/golden/panns_cnn14), checkpoint loading, and the product's path:
a video's soundtrack -> probe -> ffmpeg decode -> audio windows -> Cnn14, on the golden waveform and at the edges."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core import cpu
from extract.core.errors import MissingWeightsError
from extract.media.decode import iter_audio
from extract.media.probe import probe
from extract.models import ExtractorOptions, build_extractor
from extract.models.panns import Cnn14, Cnn14Config, LogMelFrontEnd, load_cnn14_checkpoint
from extract.models.presets import PANNS as PANNS_PRESET
from extract.models.presets import Preset
from extract.models.published import PannsExtractor
from extract.models.windows import AudioWindows
from tests.golden import GOLDEN, golden_tensors
from tests.videos import make_video_with_waveform

PANNS = GOLDEN / "panns_cnn14"
WEIGHTS_SEED = 301
SAMPLE_RATE = 32000

State = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def golden_state() -> State:
    """The golden weights under their published names, in spec order (the README: no fixed.npz, and no
    front-end tensors)."""
    return golden_tensors("panns_cnn14", WEIGHTS_SEED)


@pytest.fixture(scope="module")
def golden_model(golden_state: State) -> Cnn14:
    model = Cnn14()
    model.load_state_dict(golden_state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def ours(golden_model: Cnn14) -> dict[str, np.ndarray]:
    """Our outputs for the golden input: (1, 96000) float32 at 32 kHz, fed as stored."""
    waveform = torch.from_numpy(np.load(PANNS / "inputs.npz")["waveform"])
    with torch.inference_mode():
        spectrogram = golden_model.front_end.power_spectrogram(waveform)
        log_mel = golden_model.front_end.log_mel(spectrogram)
        output = golden_model(waveform)
    return {
        "spectrogram": spectrogram.numpy(),
        "logmel": log_mel.numpy(),
        "embedding": output.embedding.numpy(),
        "clipwise_output": output.clipwise_output.numpy(),
    }


@pytest.fixture(scope="module")
def front_end_tensors() -> State:
    return LogMelFrontEnd(Cnn14Config()).published_tensors()


@pytest.fixture(scope="module")
def published_file(
    tmp_path_factory: pytest.TempPathFactory, golden_state: State, front_end_tensors: State
) -> Iterator[Path]:
    """The golden weights saved like `Cnn14_mAP=0.431.pth`: a dict, front-end tensors first, under 'model'."""
    path = tmp_path_factory.mktemp("panns") / PANNS_PRESET.weights
    torch.save({"iteration": 0, "model": {**front_end_tensors, **golden_state}}, path)
    yield path
    path.unlink()  # 327 MB: not worth keeping among pytest's retained temp dirs


def _extractor(published_file: Path, preset: Preset = PANNS_PRESET, backend: str = "torch") -> PannsExtractor:
    options = ExtractorOptions(
        device=torch.device("cpu"), weights_dir=published_file.parent, verify_weights=False, backend=backend
    )
    built = build_extractor(preset, options)
    assert isinstance(built, PannsExtractor)
    return built


@pytest.fixture(scope="module")
def extractor(published_file: Path) -> PannsExtractor:
    """The panns preset's extractor (1-s windows every 0.5 s) with the golden weights in the published file."""
    return _extractor(published_file)


def _product_units(extractor: PannsExtractor, video: Path) -> tuple[np.ndarray, np.ndarray]:
    """What the run feeds Cnn14 for one video: (windows, spans) from its decoded audio and the extractor's windower."""
    windower = extractor.windower()
    assert isinstance(windower, AudioWindows) and extractor.audio_sampling is not None
    chunks = iter_audio(probe(video), extractor.audio_sampling)
    units = [u for u in [*(windower.push(c) for c in chunks), windower.finish()] if u is not None]
    return np.concatenate([u.inputs for u in units]), np.concatenate([u.spans for u in units])


def _soundtrack(tmp_path: Path, waveform: np.ndarray, name: str = "audio.mkv") -> Path:
    return make_video_with_waveform(tmp_path / name, waveform, SAMPLE_RATE)


def _save_small_published_layout(path: Path, state: State) -> Path:
    """`state` in the published layout, each tensor of 1 M values or more saved as a stride-0 view of one zero:
    every shape stays right and the file stays small. The front-end tensors are saved as they are."""
    small = {k: v if v.numel() < 2**20 else torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in state.items()}
    torch.save({"iteration": 0, "model": small}, path)
    return path


def test_state_dict_names_are_the_published_ones_in_order(golden_state: State) -> None:
    assert list(Cnn14().state_dict()) == list(golden_state)


@pytest.mark.parametrize(
    ("name", "atol", "rtol"),
    [
        ("spectrogram", None, 1e-3),  # atol: 1e-5 of the largest expected value
        ("logmel", 1e-3, 0.0),
        ("embedding", 1e-4, 1e-3),
        ("clipwise_output", 1e-4, 1e-3),
    ],
)
def test_matches_original_cnn14(ours: dict[str, np.ndarray], name: str, atol: float | None, rtol: float) -> None:
    expected = np.load(PANNS / "expected.npz")[name]
    atol = 1e-5 * float(np.abs(expected).max()) if atol is None else atol
    print(f"\npanns {name}: max |diff| = {np.abs(ours[name] - expected).max():.3g} (atol {atol:.3g}, rtol {rtol})")
    np.testing.assert_allclose(ours[name], expected, atol=atol, rtol=rtol)


def test_loads_published_layout_with_front_end_tensors(published_file: Path, golden_state: State) -> None:
    model = load_cnn14_checkpoint(published_file)
    loaded = model.state_dict()
    assert not model.training
    assert list(loaded) == list(golden_state)
    assert all(torch.equal(loaded[name], value) for name, value in golden_state.items())


def _rename(state: State, old: str, new: str) -> State:
    return {new if name == old else name: value for name, value in state.items()}


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        (lambda s: _rename(s, "fc1.weight", "module.fc1.weight"), "module.fc1.weight"),
        (lambda s: {k: v for k, v in s.items() if k != "conv_block3.bn2.running_var"}, "conv_block3.bn2.running_var"),
        (lambda s: {**s, "fc_audioset.weight": torch.zeros(10, 2048)}, "fc_audioset.weight"),
        (lambda s: {**s, "logmel_extractor.melW": torch.zeros(257, 64)}, "logmel_extractor.melW"),
        (lambda s: {**s, "logmel_extractor.melW": 2 * s["logmel_extractor.melW"]}, "logmel_extractor.melW"),
    ],
    ids=["unexpected-key", "missing-key", "wrong-shape", "front-end-shape", "front-end-values"],
)
def test_wrong_checkpoint_is_one_clear_line(
    tmp_path: Path,
    golden_state: State,
    front_end_tensors: State,
    change: Callable[[State], State],
    mentions: str,
) -> None:
    path = _save_small_published_layout(tmp_path / "Cnn14.pth", change({**front_end_tensors, **golden_state}))
    with pytest.raises(MissingWeightsError) as error:
        load_cnn14_checkpoint(path)
    message = str(error.value)
    print(f"\n{message}")
    assert "\n" not in message and mentions in message and str(path) in message


def test_truncated_checkpoint_is_one_clear_line(tmp_path: Path, golden_state: State, front_end_tensors: State) -> None:
    path = _save_small_published_layout(tmp_path / "Cnn14.pth", {**front_end_tensors, **golden_state})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MissingWeightsError) as error:
        load_cnn14_checkpoint(path)
    message = str(error.value)
    print(f"\n{message}")
    assert "\n" not in message and str(path) in message


def test_golden_soundtrack_through_the_product_path_matches_the_original(
    published_file: Path, tmp_path: Path, backend: str
) -> None:
    """One 3-s window (--audio-window 3) of the golden waveform, decoded from a video: the original's whole-clip
    embedding and log-mel, on each installed backend."""
    extractor = _extractor(published_file, PANNS_PRESET.with_options(audio_window=3.0, audio_hop=3.0), backend)
    assert extractor.backend_runtime()["backend"] == backend
    windows, spans = _product_units(extractor, _soundtrack(tmp_path, np.load(PANNS / "inputs.npz")["waveform"][0]))
    assert windows.shape == (1, 3 * SAMPLE_RATE) and spans.tolist() == [[0.0, 3.0]]
    expected = np.load(PANNS / "expected.npz")
    with torch.inference_mode():
        log_mel = LogMelFrontEnd(Cnn14Config())(torch.from_numpy(windows)).numpy()  # the torch front end itself
    embedding = extractor.embed(windows)
    print(
        f"\npanns via decode on {backend}: logmel max |diff| {np.abs(log_mel - expected['logmel']).max():.3g}, "
        f"embedding {np.abs(embedding - expected['embedding']).max():.3g}"
    )
    np.testing.assert_allclose(log_mel, expected["logmel"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(embedding, expected["embedding"], atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(not cpu.native_bf16(), reason="--precision bf16 runs only on a CPU with bf16 instructions")
def test_bf16_golden_soundtrack_is_the_documented_distance_from_fp32(
    published_file: Path, tmp_path: Path, backend: str
) -> None:
    """--precision bf16 through the product path on each backend, against the fp32 golden (docs/performance.md)."""
    options = ExtractorOptions(
        torch.device("cpu"), published_file.parent, "bf16", verify_weights=False, backend=backend
    )
    extractor = build_extractor(PANNS_PRESET.with_options(audio_window=3.0, audio_hop=3.0), options)
    assert extractor.backend_runtime()["backend"] == backend
    assert isinstance(extractor, PannsExtractor)
    windows, _ = _product_units(extractor, _soundtrack(tmp_path, np.load(PANNS / "inputs.npz")["waveform"][0]))
    got = extractor.embed(windows).reshape(-1).astype(np.float64)
    want = np.load(PANNS / "expected.npz")["embedding"].reshape(-1).astype(np.float64)
    diff = np.abs(got - want).max()
    cosine = got @ want / np.linalg.norm(got) / np.linalg.norm(want)
    print(
        f"\npanns bf16 on {backend} vs the fp32 golden: max |diff| {diff:.3g} (max |value| {np.abs(want).max():.3g}),"
        f" cosine {cosine:.7f}"
    )
    assert 0 < diff < 0.1 and cosine > 0.999


def test_windows_of_a_3_2_second_soundtrack_have_exact_timestamps(extractor: PannsExtractor, tmp_path: Path) -> None:
    windows, spans = _product_units(extractor, _soundtrack(tmp_path, np.full(int(3.2 * SAMPLE_RATE), 0.5)))
    assert windows.shape == (6, SAMPLE_RATE) and windows.dtype == np.float32
    np.testing.assert_allclose(spans, [[0.0, 1.0], [0.5, 1.5], [1.0, 2.0], [1.5, 2.5], [2.0, 3.0], [2.5, 3.2]])
    real = int(0.7 * SAMPLE_RATE)  # the last window holds 2.5-3.2 s, then zeros
    assert windows[:5].min() == 0.5 and windows[5, :real].min() == 0.5 and not windows[5, real:].any()


def test_audio_shorter_than_a_window_is_one_zero_padded_window(extractor: PannsExtractor, tmp_path: Path) -> None:
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, int(0.3 * SAMPLE_RATE)).astype(np.float32)
    windows, spans = _product_units(extractor, _soundtrack(tmp_path, audio))
    assert windows.shape == (1, SAMPLE_RATE) and spans.tolist() == [[0.0, 0.3]]
    assert np.array_equal(windows[0, : audio.size], audio) and not windows[0, audio.size :].any()
    assert np.isfinite(extractor.embed(windows)).all()


def test_silent_audio_gives_finite_outputs(extractor: PannsExtractor, tmp_path: Path) -> None:
    windows, _ = _product_units(extractor, _soundtrack(tmp_path, np.zeros(2 * SAMPLE_RATE)))
    with torch.inference_mode():
        output = extractor.model(torch.from_numpy(windows))
    assert output.embedding.shape == (3, 2048) and output.clipwise_output.shape == (3, 527)
    assert torch.isfinite(output.embedding).all() and torch.isfinite(output.clipwise_output).all()


def test_batched_windows_match_one_at_a_time(extractor: PannsExtractor, tmp_path: Path) -> None:
    windows, _ = _product_units(extractor, _soundtrack(tmp_path, np.load(PANNS / "inputs.npz")["waveform"][0]))
    batched = extractor.embed(windows)
    single = np.concatenate([extractor.embed(window[None]) for window in windows])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=1e-4)


def test_stereo_embeddings_are_those_of_the_channel_mean(extractor: PannsExtractor, tmp_path: Path) -> None:
    """librosa's to_mono averages the channels; ffmpeg's own stereo-to-mono would add 3 dB (0.7071 * (L + R))."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    left, right = 0.5 * np.sin(2 * np.pi * 523.25 * t), 0.25 * np.sin(2 * np.pi * 3000 * t + 1.0)
    stereo, _ = _product_units(extractor, _soundtrack(tmp_path, np.stack([left, right], axis=1), "stereo.mkv"))
    mean, _ = _product_units(extractor, _soundtrack(tmp_path, (left + right) / 2, "mean.mkv"))
    with torch.inference_mode():
        log_mels = [extractor.model.front_end(torch.from_numpy(w)) for w in (stereo, mean)]
    print(f"\npanns stereo vs channel mean: log-mel max |diff| {(log_mels[0] - log_mels[1]).abs().max():.3g} dB")
    torch.testing.assert_close(log_mels[0], log_mels[1], atol=0.05, rtol=0)  # 3 dB apart before the fix
    np.testing.assert_allclose(extractor.embed(stereo), extractor.embed(mean), atol=1e-4, rtol=1e-3)
