"""Several visual tracks read as one (`--visual clip,slowfast`): the time alignment of tracks at different rates,
the per-video skip of a video that lacks one, the width and the recorded combination."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from extract.core.errors import UsageError
from extract.store import FeatureStore, StoreWriter, Track, VideoRecord
from img_model.data.alignment import align, img_resample
from img_model.data.config import DataConfig
from img_model.data.dataset import DataSources
from img_model.data.synthetic import SyntheticSpec, write_audio_matters
from img_model.data.visual_tracks import combination_mismatch, combined_recipe, visual_track_names


def _track(values: list[float], seconds: float, width: int = 2) -> Track:
    """Rows of `width` equal columns holding `values`, each row `seconds` long from 0."""
    start = np.arange(len(values)) * seconds
    rows = np.repeat(np.array(values, np.float32)[:, None], width, axis=1)
    return Track(rows, np.stack([start, start + seconds], axis=1))


def test_a_two_second_track_is_put_on_the_steps_of_a_one_second_track_by_time() -> None:
    clip = _track([0, 1, 2, 3, 4, 5], 1.0, width=3)  # 6 rows of 1 s
    slowfast = _track([10, 20, 30], 2.0)  # 3 rows of 2 s: each covers two CLIP steps
    aligned = align([clip, slowfast], None, max_pos_len=128, rule="time")
    assert aligned.visual.shape == (6, 3 + 2) and aligned.visual.dtype == np.float32
    np.testing.assert_array_equal(aligned.visual[:, 0], [0, 1, 2, 3, 4, 5])  # the first named track comes first
    np.testing.assert_array_equal(aligned.visual[:, 3], [10, 10, 20, 20, 30, 30])
    np.testing.assert_array_equal(aligned.spans, clip.timestamps)


def test_the_first_tracks_pooled_steps_are_the_grid_and_others_are_averaged_over_them() -> None:
    clip = _track(list(range(8)), 1.0)  # 8 s at 1 row/s, pooled to 4 steps of 2 s
    slowfast = _track([10, 20, 30, 40, 50, 60, 70, 80], 1.0)  # the same rate: each step averages two rows
    timed = align([clip, slowfast], None, max_pos_len=4, rule="time")
    # IMG's pooling never averages the last row in (§2.2): the last step is row 6 alone, 6-7 s.
    np.testing.assert_allclose(timed.visual[:, 0], [0.5, 2.5, 4.5, 6])
    np.testing.assert_allclose(timed.spans, [[0, 2], [2, 4], [4, 6], [6, 7]])
    np.testing.assert_allclose(timed.visual[:, 2], [15, 35, 55, 70])


def test_the_img_rule_rescales_other_tracks_by_index_as_the_authors_rescale_slowfast() -> None:
    # img_spec.md §2.2 step 3: SlowFast rescaled to the pooled CLIP length, then concatenated.
    clip = _track(list(range(10)), 1.0)
    slowfast = _track([10, 20, 30, 40, 50], 2.0)
    audio = _track(list(range(20)), 0.5, width=1)
    aligned = align([clip, slowfast], audio, max_pos_len=4, rule="img")
    assert aligned.visual.shape == (4, 4) and aligned.audio is not None and aligned.audio.shape == (4, 1)
    np.testing.assert_allclose(aligned.visual[:, 2:], img_resample(slowfast.features.astype(np.float64), 4))
    np.testing.assert_allclose(aligned.audio, img_resample(audio.features.astype(np.float64), 4))


def test_one_track_aligns_as_before() -> None:
    clip = _track([1, 2, 3], 1.0)
    single, listed = align(clip, None, rule="time"), align([clip], None, rule="time")
    np.testing.assert_array_equal(single.visual, listed.visual)


@pytest.mark.parametrize(("value", "message"), [("clip,", "separated by ','"), ("clip,clip", "more than once")])
def test_a_malformed_visual_list_is_one_line(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        visual_track_names(value)
    with pytest.raises(UsageError, match=message):
        DataConfig(visual=value)


def test_track_names_are_read_in_order() -> None:
    assert visual_track_names("clip, slowfast") == ("clip", "slowfast")
    assert visual_track_names("i3d") == ("i3d",)


def test_the_combined_recipe_tells_order_and_recipes_apart() -> None:
    clip, slowfast = {"preset": "clip", "frames.fps": 1.0}, {"preset": "slowfast"}
    assert combined_recipe([clip]) == clip
    both = combined_recipe([clip, slowfast])
    assert both == {"tracks": 2, "track 1.preset": "clip", "track 1.frames.fps": 1.0, "track 2.preset": "slowfast"}
    assert combined_recipe([slowfast, clip]) != both


def test_another_combination_is_one_line_naming_both() -> None:
    clip = {"name": "clip", "dim": 512, "recipe": {"preset": "clip"}}
    slowfast = {"name": "slowfast", "dim": 2304, "recipe": {"preset": "slowfast"}}
    recorded = {"name": "clip,slowfast", "dim": 2816, "recipe": {}, "tracks": [clip, slowfast]}
    assert combination_mismatch(recorded, dict(recorded)) == ""
    swapped = {"name": "slowfast,clip", "dim": 2816, "recipe": {}, "tracks": [slowfast, clip]}
    assert combination_mismatch(recorded, swapped) == (
        "the checkpoint reads the visual tracks clip (512-d) + slowfast (2304-d) concatenated in that order; "
        "--visual slowfast,clip gives slowfast (2304-d) + clip (512-d)"
    )
    assert combination_mismatch(clip, {**slowfast}) == ""  # one track each: the recipe comparison says the rest


# --- the dataset ----------------------------------------------------------------------------------------------

SPEC = SyntheticSpec(train_videos_per_family=2, test_videos_per_family=1, min_steps=8, max_steps=12, silent_videos=0)
MOTION_RECIPE = {"preset": "motion", "rows_per_second": 0.5}


def _with_motion_track(folder: Path, skip: str) -> tuple[DataConfig, str]:
    """The synthetic dataset with a second visual track `motion` (one 3-d row per 2 s) for every video but `skip`
    (`skip` is a split name: the first video of that split goes without)."""
    data = write_audio_matters(folder, SPEC)
    config = DataConfig(str(data.annotations), (str(data.features),), data.visual, data.audio, str(data.text))
    sources = DataSources(config)
    videos = sorted({r.video_id for r in sources.splits()[skip]})
    without = videos[0]
    writer = StoreWriter(data.features, {"motion": {"recipe": MOTION_RECIPE, "software": {}}})
    for video_id in sources.stores.video_ids():
        if video_id == without:
            continue
        steps = sources.stores.track_shape(video_id, data.visual)[0]
        rows = (steps + 1) // 2
        start = np.arange(rows) * 2.0
        track = Track(np.full((rows, 3), 7.0, np.float32), np.stack([start, start + 2.0], axis=1))
        writer.add_video(VideoRecord(video_id, sources.stores.metadata(video_id), {"motion": track}))
    writer.close()
    sources.close()
    return replace(config, visual=f"{data.visual},motion"), without


def test_a_video_without_one_of_the_tracks_is_left_out_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, without = _with_motion_track(tmp_path / "data", "test")
    sources = DataSources(config)
    assert sources.video_dim == SPEC.visual_dim + 3
    records = sources.splits()["test"]
    with caplog.at_level("WARNING", logger="img_vmr.img_model"):
        dataset = sources.dataset(records, "test", "eval", max_pos_len=32)
    left_out = [r.qid for r in records if r.video_id == without]
    assert left_out and len(dataset) == len(records) - len(left_out)
    assert dataset.coverage.missing_track == [f"{qid} (video {without}: no motion track)" for qid in left_out]
    line = next(r.getMessage() for r in caplog.records if "without one of the visual tracks" in r.getMessage())
    assert line.startswith(f"{len(left_out)} of {len(records)} test queries") and "\n" not in line
    sample = dataset[0]
    assert sample.video.shape[1] == SPEC.visual_dim + 3 and (sample.video[:, -3:] == 7.0).all()
    visual = sources.provenance()["visual"]
    assert [track["name"] for track in visual["tracks"]] == [config.visual.split(",")[0], "motion"]
    assert visual["recipe"]["tracks"] == 2 and visual["recipe"]["track 2.preset"] == "motion"


def test_a_track_no_video_has_is_one_line(tmp_path: Path) -> None:
    data = write_audio_matters(tmp_path / "data", SPEC)
    config = DataConfig(
        str(data.annotations), (str(data.features),), f"{data.visual},slowfast", data.audio, str(data.text)
    )
    with pytest.raises(UsageError, match="no 'slowfast' features in"):
        DataSources(config)


def test_time_alignment_of_a_track_imported_without_times_is_one_line(tmp_path: Path) -> None:
    """It used to read NaN spans: every step got the first row of the imported track, silently."""
    from extract.store.interop import import_img

    data = write_audio_matters(tmp_path / "data", SPEC)
    released = tmp_path / "released"
    released.mkdir()
    with FeatureStore(data.features) as store:
        for video_id in store.video_ids():
            np.save(released / f"{video_id}.npy", np.ones((3, 4), np.float32))
    import_img(released, data.features, "motion", None)
    config = DataConfig(
        str(data.annotations), (str(data.features),), f"{data.visual},motion", data.audio, str(data.text)
    )
    assert DataSources(config).video_dim == SPEC.visual_dim + 4  # the img rule needs no times
    with pytest.raises(UsageError, match=r"'motion' was imported without them; import it again with .* --row-seconds"):
        DataSources(replace(config, align="time"))
