"""The learning check (issue 9): on the synthetic "audio matters" data, a small IMG trained and evaluated through
the img-train and img-eval CLIs learns what each modality shows. It proves the training loop, the read-time
alignment and the audio importance predictor end to end."""

from __future__ import annotations

import numpy as np
import pytest

from tests.img_cli import LearningCheck


def hit_rate(rows: list[dict], branch: str) -> float:
    return float(np.mean([row["branches"][branch]["iou"] >= 0.5 for row in rows]))


@pytest.mark.slow
def test_img_learns_from_audio_where_only_the_audio_shows_the_moment(learning_check: LearningCheck) -> None:
    # learning_check: `img-pipeline tour` (LEARNING_CHECK_CONFIG trained by img-train on write_audio_matters' data)
    # and the rows of its `img-eval best.pt --predictions ... --threads 1 --json` (tests/img_cli.py, shared)
    data, rows = learning_check.data, learning_check.rows()
    families = {
        name: [row for row in rows if data.families[row["qid"]] == name] for name in ("audio", "visual", "both")
    }
    fused = {name: hit_rate(members, "fused") for name, members in families.items()}
    importance = {name: np.mean([r["audio_importance"] for r in members]) for name, members in families.items()}
    print("fused R1@0.5 per family", fused, "mean audio importance", importance)  # the numbers for the report
    # Chance for a random span against these 15-35 % moments is about 0.1.
    assert all(rate >= 0.6 for rate in fused.values()), fused
    assert importance["audio"] > importance["visual"] + 0.1, importance
    assert hit_rate(families["audio"], "visual") <= 0.35 < fused["audio"]  # the visual branch cannot see them
