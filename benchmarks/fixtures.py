"""Inputs the benchmarks and the tests share, made here and never downloaded: synthetic videos (ffmpeg) and a CLIP
vision tower with random weights saved like a Hugging Face model folder.

tests/conftest.py imports this module (the direction that keeps test code out of the benchmarks and the
package): one maker of each, whoever needs them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# A tiny CLIP (2 layers of width 32) for tests and CPU benchmarks; VIT_B_32 is the published model's shape, for
# timings on a GPU that mean something.
TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 16,
}
VIT_B_32 = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 512,
}


def random_clip(folder: Path, shape: dict[str, int] | None = None) -> Path:
    """A CLIP vision tower (with projection) of this shape (default TINY_CLIP) and random weights (seed 0), saved
    with its image processor into folder, which the clip preset loads like openai/clip-vit-base-patch32. A
    folder that already holds one is kept."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    config = CLIPVisionConfig(image_size=224, patch_size=32, **(shape or TINY_CLIP))
    folder.mkdir(parents=True, exist_ok=True)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    return folder


def make_videos(
    folder: Path, count: int, seconds: float, size: str = "480x360", rate: int = 30, audio: bool = True
) -> list[Path]:
    """count H.264 videos (testsrc2 pattern, with an AAC sine tone of its own pitch each unless audio=False)
    named video000.mp4, ... in folder; the ones already there are kept."""
    from extract.media.ffmpeg import ffmpeg_path

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"video{index:03d}.mp4"
        if not path.exists():
            sound = ["-f", "lavfi", "-i", f"sine=frequency={200 + 10 * index}:duration={seconds}", "-c:a", "aac"]
            subprocess.run(
                [
                    ffmpeg_path(),
                    "-v",
                    "error",
                    "-y",
                    "-f",
                    "lavfi",
                    "-i",
                    f"testsrc2=size={size}:rate={rate}:duration={seconds}",
                    *(sound if audio else []),
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-pix_fmt",
                    "yuv420p",
                    str(path),
                ],
                check=True,
            )
        paths.append(path)
    return paths
