"""Extractors around the published checkpoints: I3D, VGGish, PANNs Cnn14, SlowFast.

Each one finds its published file (weights registry: --weights-dir, the cache, or a download), loads it with the
published key names, cuts its units with a streaming windower and embeds batches of units from many videos.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from extract.core.download import sha256_file
from extract.core.errors import UsageError
from extract.models.base import ExtractorOptions, FeatureExtractor, NetworkPart, Windower
from extract.models.presets import ClipWindowing, ExampleWindowing, FrameWindowing, Preset, SecondsWindowing
from extract.models.weights import locate_weights, registry_entry
from extract.models.windows import AudioWindows, FrameWindows

if TYPE_CHECKING:
    from extract.models.panns import Cnn14Config


def published_checksum(name: str) -> bool:
    """Whether `locate_weights(name, check=True)` compares the file with a published checksum: weights.verify compares
    every checksum the publisher gives, so this holds exactly when there is one."""
    return bool(registry_entry(name).published_checksums())


@dataclasses.dataclass(frozen=True)
class PublishedFiles:
    """A preset's published files as found here (verified unless --trust-weights) and the recipe they make: the
    preset with the weights' sha256, the file's name, the extra files' sha256 (cached by path, size and mtime)."""

    preset: Preset
    weights_path: Path
    extra_paths: tuple[Path, ...]

    @classmethod
    def locate(cls, preset: Preset, options: ExtractorOptions) -> PublishedFiles:
        check = options.verify_weights
        weights_path = locate_weights(preset.weights, options.weights_dir, check)
        extra_paths = tuple(locate_weights(name, options.weights_dir, check) for name in preset.extra_weights)
        return cls(dataclasses.replace(preset, weights_sha256=sha256_file(weights_path)), weights_path, extra_paths)

    def recipe(self) -> dict[str, Any]:
        recipe = self.preset.recipe()
        recipe["weights_file"] = self.weights_path.name
        if self.extra_paths:
            recipe["extra_weights_sha256"] = [sha256_file(p) for p in self.extra_paths]
        return recipe


class _PublishedExtractor(FeatureExtractor):
    """Resolves and checksums the preset's published files; the recipe records what was loaded."""

    def __init__(self, preset: Preset, options: ExtractorOptions) -> None:
        super().__init__(preset, options)
        self.check_preset(preset)
        self.files = PublishedFiles.locate(preset, options)
        self.weights_path, self.extra_paths = self.files.weights_path, list(self.files.extra_paths)
        self.preset = self.files.preset
        check = options.verify_weights
        self.weights_checked = check and all(map(published_checksum, (preset.weights, *preset.extra_weights)))

    @classmethod
    def check_preset(cls, preset: Preset) -> None:
        """UsageError for a preset (a user's option in it) this model cannot run, before any file is read."""

    def recipe(self) -> dict[str, Any]:
        return self.files.recipe()

    @classmethod
    def recipe_without_model(cls, preset: Preset, options: ExtractorOptions) -> dict[str, Any] | None:
        """The published files' recipe: the network is not needed (the weights are known by their sha256)."""
        cls.check_options(preset, options)
        cls.check_preset(preset)
        return PublishedFiles.locate(preset, options).recipe()


class I3DExtractor(_PublishedExtractor):
    """I3D RGB: windows of frames scaled to [-1, 1] -> Mixed_5c average-pooled rows, [B, t, 1024] per batch."""

    def __init__(self, preset: Preset, options: ExtractorOptions) -> None:
        from extract.models.i3d import load_i3d_checkpoint

        super().__init__(preset, options)
        self.model = load_i3d_checkpoint(self.weights_path).fold_batch_norm().to(options.device)
        self.max_batch = 32 if options.device.type == "cuda" else 4
        assert preset.frames is not None
        side = preset.frames.crop or preset.frames.short_side
        assert isinstance(preset.windowing, FrameWindowing)
        example = torch.zeros(2, 3, preset.windowing.window, side, side)
        self.load_network(NetworkPart(self.model, type(self.model).extract_features), example, self.weights_path)

    def windower(self) -> Windower:
        w = self.preset.windowing
        assert isinstance(w, FrameWindowing)
        return FrameWindows(w.window, w.stride, w.chunk)

    @torch.inference_mode()
    def embed(self, inputs: np.ndarray) -> np.ndarray:
        clips = self.to_device(inputs).permute(0, 4, 1, 2, 3).float().div_(255.0).mul_(2.0).sub_(1.0)
        assert self.network is not None
        pooled = self.network(clips)  # (B, 1024, t, 1, 1)
        return pooled.float().flatten(3).squeeze(3).transpose(1, 2).cpu().numpy()  # (B, t, 1024)


class VGGishExtractor(_PublishedExtractor):
    """VGGish: 0.96-s examples of 16-kHz audio -> 128-d post-ReLU rows (float32), or PCA + uint8 rows."""

    def __init__(self, preset: Preset, options: ExtractorOptions) -> None:
        from extract.models.vggish import load_pca_params, load_vggish_checkpoint

        super().__init__(preset, options)
        self.model = load_vggish_checkpoint(self.weights_path).eval().to(options.device)
        self.postprocessor = load_pca_params(self.extra_paths[0]).to(options.device) if self.extra_paths else None
        example = torch.zeros(2, 1, 96, 64)  # log-mel examples
        self.load_network(NetworkPart(self.model, type(self.model).forward), example, self.weights_path)

    def windower(self) -> Windower:
        w = self.preset.windowing
        assert isinstance(w, ExampleWindowing)
        return AudioWindows(w.window_samples, w.hop_samples, 16000, False, w.example_seconds)

    @torch.inference_mode()
    def examples(self, inputs: np.ndarray) -> torch.Tensor:
        """Windows from `windower()` -> the (B, 1, 96, 64) log-mel examples the network sees."""
        from extract.models.vggish import examples_from_windows

        return examples_from_windows(self.to_device(inputs))

    @torch.inference_mode()
    def embed(self, inputs: np.ndarray) -> np.ndarray:
        assert self.network is not None
        embeddings = self.network(self.examples(inputs)).float()
        if self.postprocessor is not None:
            return self.postprocessor(embeddings).cpu().numpy()  # uint8, divided by 255 at read time
        return embeddings.float().cpu().numpy()


class PannsExtractor(_PublishedExtractor):
    """PANNs Cnn14 at 32 kHz: windows of audio -> 2048-d embeddings (ReLU(fc1), before the AudioSet head)."""

    def __init__(self, preset: Preset, options: ExtractorOptions) -> None:
        from extract.models.panns import load_cnn14_checkpoint

        super().__init__(preset, options)  # check_preset: the window fits Cnn14Config(), which the model uses
        self.model = load_cnn14_checkpoint(self.weights_path).eval().to(options.device)
        self.window, self.hop = self.windows(self.preset, self.model.config)
        self.max_batch = 256 if options.device.type == "cuda" else 32
        example = torch.zeros(2, self.window)
        part = NetworkPart(self.model, lambda model, waveform: model(waveform).embedding)
        self.load_network(part, example, self.weights_path, window_samples=self.window)

    @classmethod
    def check_preset(cls, preset: Preset) -> None:
        from extract.models.panns import Cnn14Config

        cls.windows(preset, Cnn14Config())

    @staticmethod
    def windows(preset: Preset, config: Cnn14Config) -> tuple[int, int]:
        """(window, hop) in samples at the model's rate; UsageError for a window Cnn14 cannot take."""
        windowing = preset.windowing
        assert isinstance(windowing, SecondsWindowing)
        window = round(windowing.window_seconds * config.sample_rate)
        hop = round(windowing.hop_seconds * config.sample_rate)
        if window < config.min_samples:
            raise UsageError(
                f"--audio-window {windowing.window_seconds} s is shorter than Cnn14 accepts "
                f"({config.min_samples / config.sample_rate:.2f} s)"
            )
        if not 1 <= hop <= window:
            raise UsageError(
                f"--audio-hop must be between one sample and --audio-window (got {windowing.hop_seconds} s)"
            )
        return window, hop

    def windower(self) -> Windower:
        return AudioWindows(self.window, self.hop, self.model.config.sample_rate, keep_tail=True)

    @torch.inference_mode()
    def embed(self, inputs: np.ndarray) -> np.ndarray:
        assert self.network is not None
        return self.network(self.to_device(inputs)).float().cpu().numpy()


class SlowFastExtractor(_PublishedExtractor):
    """SlowFast R50 8x8: HERO's clips of 32 frames -> 2304-d rows, rounded to float16 as HERO stores them."""

    def __init__(self, preset: Preset, options: ExtractorOptions) -> None:
        from extract.models.hero_clips import ClipRule
        from extract.models.slowfast import load_slowfast_checkpoint, normalize_clips

        self.check_preset(preset)
        frames, windowing = preset.frames, preset.windowing
        assert frames is not None and frames.fps is not None and isinstance(windowing, ClipWindowing)
        self.rule = ClipRule(
            Fraction(windowing.clip_seconds), int(frames.fps), windowing.samples_per_clip, windowing.sampling_rate
        )
        super().__init__(preset, options)
        # SlowFast runs on torch on every device: its OpenVINO form has not been checked against its golden.
        self.backend = "torch"
        self.model = load_slowfast_checkpoint(self.weights_path).to(options.device)
        self.max_batch = 16 if options.device.type == "cuda" else 2
        side = frames.crop or frames.short_side
        example = torch.zeros(2, windowing.samples_per_clip, side, side, 3, dtype=torch.uint8)
        part = NetworkPart(self.model, lambda model, clips: model.extract_features(normalize_clips(clips)))
        self.load_network(part, example, self.weights_path)

    @classmethod
    def check_preset(cls, preset: Preset) -> None:
        frames = preset.frames
        assert frames is not None and frames.fps is not None
        if frames.fps != int(frames.fps):
            raise UsageError(
                f"--fps {frames.fps:g} does not fit {preset.name}: HERO's clips need a whole frame rate (30 by "
                f"default); extract {preset.name} in a run of its own without --fps (the same --out store is fine)"
            )

    def windower(self) -> Windower:
        from extract.models.hero_clips import HeroClips

        return HeroClips(self.rule)

    @torch.inference_mode()
    def embed(self, inputs: np.ndarray) -> np.ndarray:
        assert self.network is not None
        return self.network(self.to_device(inputs)).float().half().cpu().numpy()  # (B, 2304) float16
