"""How img-predict rebuilds a checkpoint's feature recipe: presets with their recorded overrides, which differences
are refused, and checkpoints whose features no preset can make."""

from __future__ import annotations

import pytest

from extract.models.presets import PANNS, get_preset
from img_model.checkpoint import Checkpoint, CheckpointMismatchError
from img_model.predict.feature_cache import FeatureSpec, preset_for, recorded_specs
from img_model.predict.recipe_check import check_recorded_recipe


@pytest.mark.parametrize(
    "preset",
    [
        get_preset("clip").with_options(fps=0.5),
        get_preset("i3d-anet-vslnet").with_options(decoder="decord"),
        PANNS.with_options(audio_window=2.0, audio_hop=0.25),
        get_preset("vggish-quantized"),
    ],
)
def test_the_recorded_recipe_rebuilds_its_preset_with_the_overrides(preset) -> None:  # type: ignore[no-untyped-def]
    spec = FeatureSpec(preset.modality, preset.name, preset.recipe())
    assert preset_for(spec).recipe() == preset.recipe()


def test_a_changed_number_is_refused_and_other_weights_need_trust() -> None:
    recorded = {"preset": "panns", "windowing.hop_seconds": 0.5, "weights_sha256": "a" * 64, "precision": "fp32"}
    with pytest.raises(CheckpointMismatchError, match=r"windowing.hop_seconds: 0.5 -> 0.25"):
        check_recorded_recipe("audio features", recorded, {**recorded, "windowing.hop_seconds": 0.25}, True, "hint")
    other = {**recorded, "weights_sha256": "b" * 64}
    with pytest.raises(CheckpointMismatchError, match="--trust-weights"):
        check_recorded_recipe("audio features", recorded, other, False, "hint")
    check_recorded_recipe("audio features", recorded, {**other, "precision": "bf16"}, True, "hint")  # warnings only


def test_features_no_preset_can_extract_are_refused_in_one_line() -> None:
    from img_model.network.config import IMGConfig

    checkpoint = Checkpoint(
        config=IMGConfig(video_feature_dim=16, audio_feature_dim=12),
        state_dict={},
        provenance={
            "visual": {"name": "synthetic-visual", "dim": 16, "recipe": {"generator": "synthetic"}},
            "audio": {"name": "synthetic-audio", "dim": 12, "recipe": {"generator": "synthetic"}},
        },
    )
    with pytest.raises(CheckpointMismatchError, match="were not made by an img-extract preset"):
        recorded_specs(checkpoint)
    converted = Checkpoint(config=IMGConfig(video_feature_dim=512, audio_feature_dim=2048), state_dict={})
    with pytest.raises(CheckpointMismatchError, match="--visual NAME"):
        recorded_specs(converted)
    specs = recorded_specs(converted, visual="clip", audio="panns")
    assert [(s.name, s.recipe["output_dim"]) for s in specs] == [("clip", 512), ("panns", 2048)]
    with pytest.raises(CheckpointMismatchError, match="gives 128-d rows; the model reads 2048-d audio rows"):
        recorded_specs(converted, visual="clip", audio="vggish")
