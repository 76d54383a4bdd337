"""A checkpoint whose features a real preset extracts from a video file: a few ffmpeg-made videos, CLIP (the tiny
random CLIP of the `tiny_clip` fixture) and VGGish (the golden weights of `published_weights`) features through
img-extract, GloVe 6B-50d text through img-extract text, and a few seconds of img-train. img-predict, the
report and the demo page are tested with it (tests/conftest.py makes it once per session: `real_run`).

Six videos of 8-13 s (96x64 test pattern with a 440 Hz tone): clip0-3 train, clip4-5 test; clip5 has no audio
stream. Two queries per video from the learning check's sentences (img_model/data/synthetic.py); "barks" and
"knocks" are not in the GloVe subset, so they read as <UNK>.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from img_model.data.synthetic import SENTENCES
from tests.conftest import run_cli
from tests.img_cli import run_img_train
from tests.store_views import store_durations
from tests.test_text_glove import glove_6b_subset
from tests.videos import make_video

TINY_REAL_CONFIG = """\
[model]
dim = 16
num_heads = 2
char_dim = 4
char_kernel_channels = [2, 2, 2, 2]
max_pos_len = 16
positional_encoding = "temporal"
fusion_gru_layers = 1
predictor_conv_layers = 1
encoder_conv_layers = 1

[train]
epochs = 2
batch_size = 4
learning_rate = 0.003

[runtime]
workers = 0
threads = 1
"""
QUERIES = (SENTENCES["audio"][0], SENTENCES["audio"][1], SENTENCES["visual"][0], SENTENCES["both"][1])
TEST_VIDEOS = ("clip4", "clip5")
SILENT_VIDEO = "clip5"


@dataclass(frozen=True)
class RealRun:
    folder: Path
    videos: Path
    features: Path
    text: Path
    annotations: Path
    checkpoint: Path
    clip_model: Path
    weights_dir: Path

    def predict_options(self, cache: Path) -> list[str]:
        """img-predict's options that find this run's feature models, with a feature cache of its own."""
        return [
            "--checkpoint",
            str(self.checkpoint),
            "--cache",
            str(cache),
            "--weights-dir",
            str(self.weights_dir),
            "--clip-model",
            str(self.clip_model),
            "--threads",
            "1",
        ]

    def queries(self) -> list[dict]:
        return [json.loads(line) for line in self.annotations.read_text().splitlines()]


def _check(result, what: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, f"{what} failed:\n{result.stderr[-3000:]}"


def make_real_run(folder: Path, clip_model: Path, weights_dir: Path) -> RealRun:
    videos = folder / "videos"
    for number in range(6):
        name = f"clip{number}"
        make_video(videos / f"{name}.mp4", seconds=8 + number, size="96x64", rate=10, audio=name != SILENT_VIDEO)
    features = folder / "feats.h5"
    extracted = run_cli(
        videos,
        "--out",
        features,
        "--features",
        "clip,vggish",
        "--clip-model",
        clip_model,
        "--weights-dir",
        weights_dir,
        "--trust-weights",
        "--workers",
        "1",
        "--no-progress",
    )
    _check(extracted, "img-extract")
    durations = store_durations(features)
    rows = []
    for number, (video_id, duration) in enumerate(sorted(durations.items())):
        for k in range(2):
            start = round(duration * (0.1 + 0.4 * k), 2)
            rows.append(
                {
                    "qid": f"q{2 * number + k}",
                    "video_id": video_id,
                    "start": start,
                    "end": round(start + 0.3 * duration, 2),
                    "duration": duration,
                    "query": QUERIES[(number + k) % len(QUERIES)],
                    "split": "test" if video_id in TEST_VIDEOS else "train",
                }
            )
    annotations = folder / "queries.jsonl"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    glove, _, _ = glove_6b_subset(folder)
    text = folder / "text.h5"
    embedded = run_cli(
        "text",
        "--annotations",
        annotations,
        "--embed",
        f"glove:{glove}",
        "--out",
        text,
        "--glove-cache",
        folder / "glove-index",
    )
    _check(embedded, "img-extract text")
    config = folder / "tiny.toml"
    config.write_text(TINY_REAL_CONFIG, encoding="utf-8")
    run = folder / "run"
    trained = run_img_train(
        "--dataset",
        annotations,
        "--features",
        features,
        "--visual",
        "clip",
        "--audio",
        "vggish",
        "--text",
        text,
        "--config",
        config,
        "--out",
        run,
        "--no-progress",
    )
    _check(trained, "img-train")
    return RealRun(folder, videos, features, text, annotations, run / "best.pt", clip_model, weights_dir)
