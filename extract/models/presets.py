"""Feature presets: one frozen object per preset pins everything that decides the numbers.

A preset is what gets written as provenance (its `recipe`), in the spirit of torchvision's weights enums; the
runner only ever sees `Preset` objects, and a user's options reach one through `with_options`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from extract.core.errors import UsageError
from extract.media.decode import AudioSampling, FrameSampling

Modality = Literal["visual", "audio"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class FrameWindowing:
    """Windows of frames (I3D): `window` frames every `stride`, in independent chunks of `chunk` frames."""

    window: int
    stride: int
    chunk: int | None
    rule: str
    short_video: str


@dataclass(frozen=True)
class ExampleWindowing:
    """Fixed examples of audio samples (VGGish's 0.96-s log-mel examples)."""

    example_seconds: float
    window_samples: int
    hop_samples: int
    tail: str


@dataclass(frozen=True)
class SecondsWindowing:
    """Windows of audio in seconds (PANNs), which --audio-window and --audio-hop set."""

    window_seconds: float
    hop_seconds: float
    tail: str


@dataclass(frozen=True)
class ClipWindowing:
    """HERO's clips of frames (SlowFast): `samples_per_clip` frames sampled from each `clip_seconds` clip
    (extract/models/hero_clips.py); the other fields describe the rule for the recipe."""

    clip_seconds: str  # a fraction, e.g. "2" (exact: HERO counts clips of whole frames)
    samples_per_clip: int
    sampling_rate: int
    padding: str
    clips: str
    sampling: str


Windowing = FrameWindowing | ExampleWindowing | SecondsWindowing | ClipWindowing


@dataclass(frozen=True)
class Preset:
    name: str
    model: str  # which extractor class builds it (extract.models registry key)
    weights: str  # published file name, or HF model id / directory
    modality: Modality
    output_dim: int
    description: str
    frames: FrameSampling | None = None
    audio: AudioSampling | None = None
    weights_sha256: str | None = None
    weights_url: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    windowing: Windowing | None = None  # how units are cut; None: one unit per sampled frame
    extra_weights: tuple[str, ...] = ()  # further published files (VGGish's PCA parameters)
    weights_by_model_id: bool = False  # weights are a Hugging Face id or folder (--clip-model), not a published file

    def with_options(
        self,
        *,
        fps: float | None = None,
        decoder: str | None = None,
        weights: str | None = None,
        audio_window: float | None = None,
        audio_hop: float | None = None,
    ) -> Preset:
        """The same preset with a user's options, each where it applies (all end up in the recipe): --fps and
        --decoder to presets that sample frames, another model (--clip-model) to presets whose weights are a
        model id, --audio-window / --audio-hop to presets windowed in seconds. `accepts` says which apply."""
        preset = self
        if self.frames is not None and (fps is not None or decoder is not None):
            if decoder is not None and decoder not in ("ffmpeg", "decord"):
                raise UsageError(f"--decoder must be ffmpeg or decord, got {decoder!r}")
            if fps is not None and fps <= 0:
                raise UsageError(f"--fps must be positive, got {fps}")
            frames = dataclasses.replace(
                self.frames,
                fps=self.frames.fps if fps is None else fps,
                decoder=self.frames.decoder if decoder is None else decoder,
            )
            preset = dataclasses.replace(preset, frames=frames)
        if weights is not None and self.weights_by_model_id:
            preset = dataclasses.replace(preset, weights=weights, weights_sha256=None, weights_url=None)
        if isinstance(self.windowing, SecondsWindowing) and (audio_window is not None or audio_hop is not None):
            preset = dataclasses.replace(preset, windowing=self._audio_windows(audio_window, audio_hop))
        return preset

    def accepts(self, option: str) -> bool:
        """Whether with_options applies `option` (fps, decoder, weights, audio_window, audio_hop) to this preset."""
        if option in ("fps", "decoder"):
            return self.frames is not None
        if option == "weights":
            return self.weights_by_model_id
        return isinstance(self.windowing, SecondsWindowing) and option in ("audio_window", "audio_hop")

    def _audio_windows(self, window: float | None, hop: float | None) -> SecondsWindowing:
        assert isinstance(self.windowing, SecondsWindowing)
        for value in (window, hop):
            if value is not None and value <= 0:
                raise UsageError(f"--audio-window and --audio-hop must be positive, got {value}")
        windowing = dataclasses.replace(
            self.windowing,
            window_seconds=self.windowing.window_seconds if window is None else window,
            hop_seconds=self.windowing.hop_seconds if hop is None else hop,
        )
        if windowing.hop_seconds > windowing.window_seconds:
            raise UsageError(
                f"--audio-hop {windowing.hop_seconds:g} s is longer than the {windowing.window_seconds:g}-s "
                "window (--audio-window): audio between windows would be skipped; give a hop up to the window"
            )
        return windowing

    def recipe(self) -> dict[str, Any]:
        """Every parameter that changes the numbers, as plain JSON-able values."""
        windowing = dataclasses.asdict(self.windowing) if self.windowing is not None else {}
        out: dict[str, Any] = {
            "preset": self.name,
            "model": self.model,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "modality": self.modality,
            "output_dim": self.output_dim,
            **{f"preprocessing.{k}": v for k, v in self.preprocessing.items()},
            **{f"windowing.{k}": v for k, v in windowing.items()},
            **({"extra_weights": list(self.extra_weights)} if self.extra_weights else {}),
        }
        if self.frames is not None:
            frames = dataclasses.asdict(self.frames)
            frames.pop("chunk_frames")  # a memory knob, not a numeric one
            out.update({f"frames.{k}": v for k, v in frames.items()})
        if self.audio is not None:
            audio = dataclasses.asdict(self.audio)
            audio.pop("chunk_seconds")
            out.update({f"audio.{k}": v for k, v in audio.items()})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


CLIP = Preset(
    name="clip",
    model="clip-vision",
    weights="openai/clip-vit-base-patch32",
    modality="visual",
    output_dim=512,
    description="CLIP ViT-B/32 projected image embedding per frame, frames at 1 fps (--fps to change)",
    frames=FrameSampling(fps=1.0, short_side=224, resize="shorter", crop=224, decoder="ffmpeg"),
    weights_url="https://huggingface.co/openai/clip-vit-base-patch32",
    preprocessing={"interpolation": "bicubic", "scale": "1/255", "mean": CLIP_MEAN, "std": CLIP_STD},
    weights_by_model_id=True,
)

I3D_SCALING = {"scale": "x / 255 * 2 - 1"}
SHORT_VIDEO = "videos of at most one window: all frames, padded by repeating the last frame"

I3D_CHARADES_VSLNET = Preset(
    name="i3d-charades-vslnet",
    model="i3d",
    weights="rgb_charades.pt",
    modality="visual",
    output_dim=1024,
    description="VSLNet's Charades I3D: 24 fps, 24-frame windows, two 1024-d rows per window, rgb_charades.pt",
    frames=FrameSampling(
        fps=24.0,
        short_side=226,
        resize="shorter_if_below",
        crop=224,
        interpolation="cv2_bilinear",
        rounding="round",
        selection="ffmpeg_fps_near",
        chunk_frames=48,
    ),
    preprocessing=I3D_SCALING,
    windowing=FrameWindowing(window=24, stride=24, chunk=None, rule="vslnet", short_video=SHORT_VIDEO),
)

I3D_ANET_VSLNET = Preset(
    name="i3d-anet-vslnet",
    model="i3d",
    weights="rgb_imagenet.pt",
    modality="visual",
    output_dim=1024,
    description="VSLNet's ActivityNet I3D: native fps, short side 224, 16-frame windows in 10000-frame chunks",
    frames=FrameSampling(
        fps=None,
        short_side=224,
        resize="shorter",
        crop=224,
        interpolation="cv2_bilinear",
        rounding="round",
        selection="ffmpeg_fps_near",
        chunk_frames=48,
    ),
    preprocessing=I3D_SCALING,
    windowing=FrameWindowing(window=16, stride=16, chunk=10000, rule="vslnet", short_video=SHORT_VIDEO),
)

I3D_DEFAULT = Preset(
    name="i3d",
    model="i3d",
    weights="rgb_imagenet.pt",
    modality="visual",
    output_dim=1024,
    description="I3D Kinetics: 24 fps, short side 256, centre crop 224, 16-frame windows, stride 16",
    frames=FrameSampling(fps=24.0, short_side=256, resize="shorter", crop=224, chunk_frames=48),
    preprocessing=I3D_SCALING,
    windowing=FrameWindowing(window=16, stride=16, chunk=None, rule="vslnet", short_video=SHORT_VIDEO),
)

VGGISH_WINDOWING = ExampleWindowing(
    example_seconds=0.96,
    window_samples=15600,  # 96 log-mel frames of 25 ms every 10 ms
    hop_samples=15360,
    tail="dropped (as the reference); audio shorter than one example: one zero-padded example",
)

VGGISH = Preset(
    name="vggish",
    model="vggish",
    weights="vggish-10086976.pth",
    modality="audio",
    output_dim=128,
    description="VGGish 128-d post-ReLU embedding per 0.96-s example, 16 kHz",
    audio=AudioSampling(sample_rate=16000),
    windowing=VGGISH_WINDOWING,
)

VGGISH_QUANTIZED = dataclasses.replace(
    VGGISH,
    name="vggish-quantized",
    description="VGGish + PCA + 8-bit quantisation (uint8; IMG's ActivityNet audio, /255 at read time)",
    extra_weights=("vggish_pca_params-970ea276.pth",),
    preprocessing={"postprocess": "PCA, clip to [-2, 2], x 63.75, round half to even, uint8"},
)

PANNS = Preset(
    name="panns",
    model="panns-cnn14",
    weights="Cnn14_mAP=0.431.pth",
    modality="audio",
    output_dim=2048,
    description="PANNs Cnn14 2048-d embedding over 1-s windows every 0.5 s, 32 kHz (--audio-window/--audio-hop)",
    audio=AudioSampling(sample_rate=32000),
    windowing=SecondsWindowing(window_seconds=1.0, hop_seconds=0.5, tail="one zero-padded window over the rest"),
)

SLOWFAST = Preset(
    name="slowfast",
    model="slowfast",
    weights="SLOWFAST_8x8_R50.pkl",
    modality="visual",
    output_dim=2304,
    description="SlowFast R50 8x8 2304-d float16 row per 2-s clip of 30-fps frames (Moment-DETR / HERO features)",
    # HERO_Video_Feature_Extractor's slowfast/extract_feature: ffmpeg `fps=30,scale=W:H,crop=224:224:x:y` to rgb24
    frames=FrameSampling(
        fps=30.0,
        short_side=224,
        resize="shorter",
        crop=224,
        interpolation="swscale_default",
        rounding="truncate",
        selection="ffmpeg_fps_near",
        chunk_frames=60,
    ),
    weights_url="https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400/SLOWFAST_8x8_R50.pkl",
    preprocessing={
        "scale": "x / 255",
        "mean": (0.45, 0.45, 0.45),
        "std": "(0.225, 0.225, 0.225) + 1e-8 in float32",
        "pathways": "slow: frames linspace(0, 31, 8) truncated, fast: all 32",
        "feature": "mean of res5, slow ; fast",
        "output_dtype": "float16",
    },
    windowing=ClipWindowing(
        clip_seconds="2",
        samples_per_clip=32,
        sampling_rate=2,
        padding="last frame to whole seconds, then last second to a multiple of the clip length's numerator",
        clips="ceil(video stream duration / clip_seconds)",
        sampling="positions linspace(0, 64 * floor(source fps) / 30 - 1, 32) truncated, clamped to the clip",
    ),
)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (CLIP, I3D_CHARADES_VSLNET, I3D_ANET_VSLNET, I3D_DEFAULT, VGGISH, VGGISH_QUANTIZED, PANNS, SLOWFAST)
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown feature preset {name!r}; choose from: {', '.join(PRESETS)}") from None
