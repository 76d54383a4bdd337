"""Table 6's CLIP+SF setting as users run it: ffmpeg-made videos, img-extract of CLIP (the tiny random CLIP of
`tiny_clip`), SlowFast (the golden weights in the published file of `published_weights`) and VGGish, CLIP text
features through img-extract text (a tiny random CLIP text tower), img-train with `--visual clip,slowfast`, and
img-eval of its checkpoint, which refuses another combination of tracks in one line.

Three videos of 2 s at 96x64 (clip0, clip1 train, clip2 test). CLIP rows are 1 s (1 fps), SlowFast rows 2 s: the
SlowFast track is put on CLIP's steps. SlowFast is the published R50 (its checkpoint fixes the network's size), about
12 s per 2-s clip on 2 busy cores: one clip per video keeps the run near a minute."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from extract.store import FeatureStore
from img_model.checkpoint import read_checkpoint
from tests.conftest import run_cli
from tests.img_cli import run_img_eval, run_img_predict, run_img_train
from tests.store_views import store_durations
from tests.test_text_encoders import save_tiny_clip_text
from tests.videos import make_video

TINY_CONFIG = """\
[model]
dim = 16
num_heads = 2
max_pos_len = 8
positional_encoding = "temporal"
fusion_gru_layers = 1
predictor_conv_layers = 1
encoder_conv_layers = 1

[train]
epochs = 2
batch_size = 2
learning_rate = 0.003

[runtime]
workers = 0
threads = 1
"""
SENTENCES = ("the person opens the door", "the person turns on the light")


def _check(result, what: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, f"{what} failed:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def clip_sf_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, published_weights: Path
) -> tuple[Path, Path, Path, Path]:
    """(feature store, text store, queries, run folder) of a tiny CLIP+SF run."""
    folder = tmp_path_factory.mktemp("clip-sf")
    for number in range(3):
        make_video(folder / "videos" / f"clip{number}.mp4", seconds=2, size="96x64", rate=10)
    features = folder / "feats.h5"
    extracted = run_cli(
        folder / "videos",
        "--out",
        features,
        "--features",
        "clip,slowfast,vggish",
        "--clip-model",
        tiny_clip,
        "--weights-dir",
        published_weights,
        "--trust-weights",
        "--workers",
        "1",
        "--no-progress",
    )
    _check(extracted, "img-extract")
    rows = []
    for number, (video_id, duration) in enumerate(sorted(store_durations(features).items())):
        for k, sentence in enumerate(SENTENCES):
            start = round(duration * 0.4 * k, 2)
            rows.append(
                {
                    "qid": f"q{2 * number + k}",
                    "video_id": video_id,
                    "start": start,
                    "end": round(start + 0.5 * duration, 2),
                    "duration": duration,
                    "query": sentence,
                    "split": "test" if video_id == "clip2" else "train",
                }
            )
    queries = folder / "queries.jsonl"
    queries.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    text = folder / "text.h5"
    model = save_tiny_clip_text(folder / "tiny-clip-text")
    _check(run_cli("text", "--annotations", queries, "--embed", f"clip-text:{model}", "--out", text), "text")
    config = folder / "tiny.toml"
    config.write_text(TINY_CONFIG, encoding="utf-8")
    run = folder / "run"
    trained = run_img_train(
        "--dataset",
        queries,
        "--features",
        features,
        "--visual",
        "clip,slowfast",
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
    return features, text, queries, run


@pytest.mark.slow
def test_clip_and_slowfast_tracks_keep_their_own_rates_in_the_store(clip_sf_run) -> None:
    features, *_ = clip_sf_run
    with FeatureStore(features) as store:
        clip, slowfast = store.track("clip0", "clip"), store.track("clip0", "slowfast")
    assert clip.features.shape == (2, 16) and slowfast.features.shape == (1, 2304)  # the tiny CLIP projects to 16
    np.testing.assert_allclose(clip.timestamps, [[0, 1], [1, 2]])
    np.testing.assert_allclose(slowfast.timestamps, [[0, 2]])


@pytest.mark.slow
def test_a_clip_slowfast_run_records_both_tracks_and_evaluates(clip_sf_run) -> None:
    *_, run = clip_sf_run
    checkpoint = read_checkpoint(run / "best.pt")
    assert checkpoint.config.video_feature_dim == 16 + 2304 and checkpoint.config.query_features == "precomputed"
    visual = checkpoint.provenance["visual"]
    assert visual["name"] == "clip,slowfast" and visual["dim"] == 2320
    assert [(t["name"], t["dim"], t["recipe"]["preset"]) for t in visual["tracks"]] == [
        ("clip", 16, "clip"),
        ("slowfast", 2304, "slowfast"),
    ]
    assert visual["recipe"]["tracks"] == 2 and visual["recipe"]["track 2.windowing.clip_seconds"] == "2"
    evaluated = run_img_eval(run / "best.pt", "--json", "--threads", "1")  # the run's own stores and tracks
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["split"] == "test" and report["queries"] == 2
    mious = [report["branches"][branch]["mIoU"] for branch in ("fused", "visual", "audio")]
    assert all(math.isfinite(x) and 0 <= x <= 100 for x in mious)


@pytest.mark.slow
def test_img_eval_refuses_another_combination_of_tracks_in_one_line(clip_sf_run) -> None:
    _, _, _, run = clip_sf_run
    swapped = run_img_eval(run / "best.pt", "--visual", "slowfast,clip", "--threads", "1")
    assert swapped.returncode == 2, swapped.stderr
    line = swapped.stderr.strip().splitlines()[-1]
    assert "the checkpoint reads the visual tracks clip (16-d) + slowfast (2304-d) concatenated in that order" in line
    assert "--visual slowfast,clip gives slowfast (2304-d) + clip (16-d)" in line
    alone = run_img_eval(run / "best.pt", "--visual", "clip", "--threads", "1")
    assert alone.returncode == 2 and "--visual clip gives clip (16-d)" in alone.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_img_predict_says_in_one_line_that_it_makes_one_visual_track_per_video(clip_sf_run) -> None:
    features, _, _, run = clip_sf_run
    video = features.parent / "videos" / "clip2.mp4"
    result = run_img_predict("--checkpoint", run / "best.pt", "--cache", run.parent / "cache", video, "a door")
    line = _one_line_error(result)
    assert "the checkpoint reads several visual tracks as one (clip,slowfast)" in line and "img-eval" in line


def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]
