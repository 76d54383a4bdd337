"""`--shard i/N` and `img-extract merge`: a stable partition by id hash, shard stores joined into one store, and
img-train reading the shards or the merged store as one dataset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from extract.core.errors import (
    ProvenanceMismatchError,
    StoreCorruptError,
    StoreLockedError,
    StoreWriteError,
    UsageError,
)
from extract.media.sources import VideoSource
from extract.run.plan import plan_run
from extract.run.shard import Shard, record_run_shard, shard_of
from extract.store import FeatureStore, StoreWriter, VideoRecord, list_parts, parts_dir
from extract.store.merge import merge_stores
from extract.store.parts import next_part_name
from extract.store.shards import SHARD_RECORD, ShardRecord, read_shard_record, write_shard_record
from img_model.data.config import DataConfig
from img_model.data.dataset import DataSources
from img_model.data.feature_stores import FeatureStores
from img_model.data.synthetic import SyntheticSpec, write_audio_matters
from tests.conftest import run_cli
from tests.test_store_compact import CLIP_A, _commit, _everything, _failure, _video
from tests.videos import make_video

IDS = [f"v_{n:04d}" for n in range(400)] + ["ü/é", "bad\udcffname", ".hidden", "a b"]


def test_shards_partition_the_ids_and_balance_them() -> None:
    for count in (1, 2, 7):
        owners = [[index for index in range(count) if Shard(index, count).holds(video_id)] for video_id in IDS]
        assert all(len(owner) == 1 for owner in owners)
    sizes = Counter(shard_of(video_id, 4) for video_id in IDS[:400])
    assert sorted(sizes) == [0, 1, 2, 3] and min(sizes.values()) >= 75


def test_shard_of_an_id_never_changes() -> None:
    """Fixed values: another hash (or Python's salted hash()) would move videos between the shards of runs
    already done, so a re-run of shard i would miss some videos and repeat others."""
    assert [shard_of(video_id, 1000) for video_id in ("v_abc", "3MSZA", "ü/é", "bad\udcff")] == [174, 610, 886, 441]
    shard_py = Path(__file__).resolve().parents[1] / "extract" / "run" / "shard.py"
    code = (  # the module alone, not the whole run package (fast)
        "import importlib.util as u, sys; s = u.spec_from_file_location('shard', sys.argv[1]); "
        "m = sys.modules['shard'] = u.module_from_spec(s); s.loader.exec_module(m); "
        "print([m.shard_of(v, 1000) for v in ('v_abc', '3MSZA')])"
    )
    for seed in ("1", "2"):  # Python's own str hash differs between these processes
        env = {"PYTHONHASHSEED": seed, "PYTHONPATH": str(shard_py.parents[2])}
        out = subprocess.run([sys.executable, "-c", code, str(shard_py)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[174, 610]"


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0", "1/2/3", "²/4", "0/٣"])
def test_a_wrong_shard_is_one_line(text: str) -> None:
    with pytest.raises(UsageError, match="--shard"):
        Shard.parse(text)


def test_the_plan_holds_only_the_shards_videos() -> None:
    sources = [VideoSource(video_id, Path(f"/videos/{n}.mp4")) for n, video_id in enumerate(IDS)]
    plans = [plan_run(sources, None, {"clip": "visual"}, shard=Shard(index, 3)) for index in range(3)]
    planned = [item.video_id for plan in plans for item in plan.items]
    assert sorted(planned) == sorted(IDS)
    assert [plan.considered for plan in plans] == [len(plan.items) for plan in plans]
    assert all(shard_of(item.video_id, 3) == index for index, plan in enumerate(plans) for item in plan.items)
    limited = plan_run(sources, None, {"clip": "visual"}, shard=Shard(1, 3), limit=5)
    assert [item.video_id for item in limited.items] == [item.video_id for item in plans[1].items[:5]]


# --- merge ----------------------------------------------------------------------------------------------------


def _shards(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "s0.h5", tmp_path / "s1.h5"
    _commit(first, {"clip": CLIP_A}, _video("a", 1, clip=2), _failure("c", "clip"))
    _commit(first, {"clip": CLIP_A}, _video("d", 4, clip=1))
    _commit(second, {"clip": CLIP_A}, _video("b", 2, clip=3))
    return first, second


def test_merge_joins_shards_into_one_store_and_can_run_again(tmp_path: Path) -> None:
    first, second = _shards(tmp_path)
    out = tmp_path / "all.h5"
    report = merge_stores([first, second], out)
    assert (report.videos, report.failures, report.duplicates) == (3, 1, 0)
    with FeatureStore(first) as a, FeatureStore(second) as b, FeatureStore(out) as merged:
        both = _everything(merged)
        expected = {**_everything(a)["videos"], **_everything(b)["videos"]}
        strip = {v: (m, {n: t[:3] for n, t in tr.items()}, f) for v, (m, tr, f) in both["videos"].items()}
        assert strip == {v: (m, {n: t[:3] for n, t in tr.items()}, f) for v, (m, tr, f) in expected.items()}
        assert [f[0] for f in both["failures"]] == ["c"]
    assert len(list_parts(parts_dir(out))) == 1
    index_before = out.read_bytes()
    again = merge_stores([first, second], out)  # e.g. after a shard was re-run: the old parts are replaced
    assert again.videos == 3 and len(list_parts(parts_dir(out))) == 1 and out.read_bytes() != index_before
    with FeatureStore(out) as merged:
        assert merged.video_ids() == ["a", "b", "d"]


def test_a_video_in_two_shards_comes_from_the_last_one(tmp_path: Path) -> None:
    first, second = _shards(tmp_path)
    _commit(second, {"clip": CLIP_A}, _video("a", 9, clip=5))
    report = merge_stores([first, second], tmp_path / "all.h5")
    assert report.duplicates == 1
    with FeatureStore(tmp_path / "all.h5") as merged:
        assert merged.track("a", "clip").features.shape == (5, 4) and merged.video_ids() == ["a", "b", "d"]
    # img-train's --features follows the same rule: the later store wins
    with FeatureStores([first, second]) as later_second, FeatureStores([second, first]) as later_first:
        assert later_second.track("a", "clip").features.shape == (5, 4)
        assert later_first.track("a", "clip").features.shape == (2, 4)
        assert later_second.video_ids() == ["a", "b", "d"]


def test_merge_refuses_shards_made_differently_and_writes_nothing(tmp_path: Path) -> None:
    first, second = _shards(tmp_path)
    other = tmp_path / "s2.h5"
    _commit(other, {"clip": {**CLIP_A, "recipe": {"preset": "clip", "frames.fps": 0.5}}}, _video("z", 1, clip=1))
    out = tmp_path / "all.h5"
    with pytest.raises(ProvenanceMismatchError, match=r"s0\.h5 and .*s2\.h5 hold 'clip' features made differently"):
        merge_stores([first, second, other], out)
    assert list_parts(parts_dir(out)) == [] and not out.exists()


def test_merge_refuses_a_shard_being_written_and_itself_as_out(tmp_path: Path) -> None:
    first, second = _shards(tmp_path)
    writer = StoreWriter(second, {})
    try:
        with pytest.raises(StoreLockedError, match=r"s1\.h5 is being written by pid"):
            merge_stores([first, second], tmp_path / "all.h5")
    finally:
        writer.abandon()
    with pytest.raises(UsageError, match="is one of the shards"):
        merge_stores([first, second], first)
    with pytest.raises(UsageError, match=r"s0\.h5 is named twice; name each shard once"):
        merge_stores([first, second, tmp_path / "." / "s0.h5"], tmp_path / "all.h5")


def _folder_listing(tmp_path: Path) -> list[str]:
    return sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))


def test_a_refused_merge_leaves_no_trace_of_out(tmp_path: Path) -> None:
    """A merge refused for mismatched recipes used to leave OUT.parts/ holding an empty writer.lock."""
    first, second = _shards(tmp_path)
    other = tmp_path / "s2.h5"
    _commit(other, {"clip": {**CLIP_A, "recipe": {"preset": "clip", "frames.fps": 0.5}}}, _video("z", 1, clip=1))
    before = _folder_listing(tmp_path)
    with pytest.raises(ProvenanceMismatchError, match="made differently"):
        merge_stores([first, second, other], tmp_path / "all.h5")
    writer = StoreWriter(second, {})
    try:
        with pytest.raises(StoreLockedError, match="is being written by"):
            merge_stores([first, second], tmp_path / "all.h5")
    finally:
        writer.abandon()
    write_shard_record(parts_dir(first), ShardRecord(3, frozenset({0})))
    write_shard_record(parts_dir(second), ShardRecord(2, frozenset({1})))
    with pytest.raises(UsageError, match="they split the videos differently"):  # refused under OUT's lock
        merge_stores([first, second], tmp_path / "all.h5")
    assert _folder_listing(tmp_path) == sorted(before + [f"s{i}.h5.parts/shard.json" for i in (0, 1)])


def test_a_merge_that_cannot_write_its_index_leaves_out_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk when the index is written: the new parts are removed (they would double OUT on a full disk),
    and so is the folder of an OUT the merge created; an OUT that existed keeps its parts and index."""
    first, second = _shards(tmp_path)
    out = tmp_path / "all.h5"
    merge_stores([first], out)
    with FeatureStore(out) as store:
        kept = _everything(store)
    existing = _folder_listing(tmp_path)
    index_bytes = out.read_bytes()

    def disk_full(self: FeatureStore) -> None:
        raise StoreWriteError(f"cannot write the feature store {self.path}: no space left on device")

    monkeypatch.setattr(FeatureStore, "write_index", disk_full)
    with pytest.raises(StoreWriteError, match="no space left"):
        merge_stores([first, second], tmp_path / "new.h5")
    with pytest.raises(StoreWriteError, match="no space left"):
        merge_stores([second], out)
    monkeypatch.undo()
    assert _folder_listing(tmp_path) == existing and out.read_bytes() == index_bytes
    with FeatureStore(out) as store:
        assert _everything(store) == kept


def test_a_shard_runs_store_records_its_shard_and_takes_only_runs_of_the_same_split(tmp_path: Path) -> None:
    store, folder = tmp_path / "s.h5", tmp_path / "s.h5.parts"
    folder.mkdir()
    record_run_shard(store, folder, Shard(1, 4), has_parts=False)
    assert read_shard_record(folder) == ShardRecord(4, frozenset({1}))
    record_run_shard(store, folder, Shard(1, 4), has_parts=True)  # the same shard again (resume): unchanged
    record_run_shard(store, folder, Shard(3, 4), has_parts=True)  # another shard of the same split: held too
    assert read_shard_record(folder) == ShardRecord(4, frozenset({1, 3}))
    with pytest.raises(UsageError, match=r"s\.h5 holds shard 1/4, 3/4; --shard 0/2 splits the videos another way"):
        record_run_shard(store, folder, Shard(0, 2), has_parts=True)
    with pytest.raises(UsageError, match=r"holds shard 1/4, 3/4 of a split extraction; run with --shard i/4"):
        record_run_shard(store, folder, None, has_parts=True)
    whole = tmp_path / "whole.h5.parts"
    whole.mkdir()
    record_run_shard(tmp_path / "whole.h5", whole, Shard(0, 2), has_parts=True)  # a whole run's store: no record
    assert read_shard_record(whole) is None
    (folder / SHARD_RECORD).write_text("{")
    with pytest.raises(StoreCorruptError, match=r"shard\.json is damaged \(JSONDecodeError\)"):
        read_shard_record(folder)


def test_merge_names_the_shards_not_merged_yet_and_refuses_another_split(tmp_path: Path) -> None:
    """A missing shard used to leave its videos out of the merged store without a word."""
    first, second = _shards(tmp_path)
    third = tmp_path / "s2.h5"
    _commit(third, {"clip": CLIP_A}, _video("e", 1, clip=1))
    for index, shard in enumerate((first, second, third)):
        write_shard_record(parts_dir(shard), ShardRecord(3, frozenset({index})))
    out = tmp_path / "all.h5"
    report = merge_stores([first, third], out)
    assert report.missing_shards == "1/3" and report.unrecorded == []
    assert read_shard_record(parts_dir(out)) == ShardRecord(3, frozenset({0, 2}))  # what OUT holds
    later = merge_stores([second], out)  # the late shard, merged into OUT when it is done
    assert later.missing_shards == "" and read_shard_record(parts_dir(out)) is None  # whole: no record left
    with FeatureStore(out) as merged:
        assert merged.video_ids() == ["a", "b", "d", "e"]
    other = tmp_path / "o.h5"
    _commit(other, {"clip": CLIP_A}, _video("z", 1, clip=1))
    write_shard_record(parts_dir(other), ShardRecord(2, frozenset({0})))
    with pytest.raises(UsageError, match=r"s0\.h5 holds shard 0/3 and .*o\.h5 shard 0/2: they split the videos"):
        merge_stores([first, other], tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()
    unknown = merge_stores([first, second], tmp_path / "x.h5")
    assert unknown.missing_shards == "2/3"


def test_a_part_committed_twice_reads_and_indexes_each_video_once(tmp_path: Path) -> None:
    """A crash right after a part's rename, then the same records committed again: the reader and the index
    take each video once (the latest part), and the index links only parts that exist."""
    first, _ = _shards(tmp_path)
    parts = list_parts(parts_dir(first))
    again = parts_dir(first) / next_part_name(parts[-1].name, 99)
    shutil.copyfile(parts[0], again)
    with FeatureStore(first) as store:
        assert store.video_ids() == ["a", "d"] and [f.video_id for f in store.failures()] == ["c"]
        store.write_index()
    with h5py.File(first, "r") as index:
        assert sorted(index["videos"]) == ["a", "d"]
        assert index["videos/a/clip"].file.filename  # the external link resolves
        assert set(json.loads(index.attrs["parts"])) == {
            f"{first.name}.parts/{again.name}",
            f"{first.name}.parts/{parts[1].name}",
        }
    assert merge_stores([first], tmp_path / "out.h5").videos == 2


# --- img-train reads shards or the merged store ---------------------------------------------------------------


def _split_into_shards(store_path: Path, out: Path, count: int) -> list[Path]:
    shards = [out / f"feats-{index}.h5" for index in range(count)]
    with FeatureStore(store_path) as store:
        provenance = {name: store.provenance_record(name) for name in store.feature_names()}
        writers = [StoreWriter(path, provenance) for path in shards]
        for video_id in store.video_ids():
            tracks = {name: store.track(video_id, name) for name in store.feature_names(video_id)}
            writers[shard_of(video_id, count)].add_video(VideoRecord(video_id, store.metadata(video_id), tracks))
    for writer in writers:
        writer.close()
    return shards


def test_img_train_reads_shard_stores_and_the_merged_store_as_the_one_store(tmp_path: Path) -> None:
    spec = SyntheticSpec(train_videos_per_family=3, test_videos_per_family=2, min_steps=10, max_steps=20)
    data = write_audio_matters(tmp_path / "synthetic", spec)
    shards = _split_into_shards(data.features, tmp_path, 2)
    merged = tmp_path / "merged.h5"
    merge_stores(shards, merged)
    config = DataConfig(str(data.annotations), (str(data.features),), data.visual, data.audio, str(data.text))
    loaded = {}
    for name, stores in {"one": [data.features], "shards": shards, "merged": [merged]}.items():
        sources = DataSources(replace(config, features=tuple(map(str, stores))))
        records = sources.splits()["test"]
        dataset = sources.dataset(records, "test", "eval", max_pos_len=16)
        loaded[name] = [(item.video, item.audio) for item in (dataset[n] for n in range(len(dataset)))]
    assert len(loaded["one"]) > 0
    for name in ("shards", "merged"):
        assert len(loaded[name]) == len(loaded["one"])
        for (video, audio), (video_one, audio_one) in zip(loaded[name], loaded["one"], strict=True):
            assert np.array_equal(video, video_one) and np.array_equal(audio, audio_one)
    with FeatureStore(shards[0]) as first, FeatureStore(shards[1]) as second:
        assert len(first) > 0 and len(second) > 0


# --- through the CLI ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_shard_runs_merge_into_the_store_of_one_run(tmp_path: Path, tiny_clip: Path) -> None:
    videos = tmp_path / "videos"
    for n in range(5):
        make_video(videos / f"clip{n}.mp4", seconds=1 + n % 2, size="96x64", audio=False)
    common = ["--clip-model", tiny_clip, "--no-progress", "--batch-size", "1"]
    whole = run_cli(videos, "--out", tmp_path / "whole.h5", *common)
    assert whole.returncode == 0, whole.stderr
    for index in range(2):
        shard = run_cli(videos, "--out", tmp_path / f"s{index}.h5", "--shard", f"{index}/2", *common)
        assert shard.returncode == 0, shard.stderr
        expected = sum(shard_of(f"clip{n}", 2) == index for n in range(5))
        assert f"{expected} videos (shard {index}/2): {expected} to extract" in shard.stderr
    early = run_cli("merge", tmp_path / "s1.h5", "--out", tmp_path / "all.h5", "--no-progress")
    assert early.returncode == 0, early.stderr  # shard 0 not done yet: said, and OUT remembers what it holds
    said = f"{tmp_path / 'all.h5'} holds no videos of shard 0/2 yet; when they are done: img-extract merge"
    assert said in early.stderr
    merged = run_cli("merge", tmp_path / "s0.h5", "--out", tmp_path / "all.h5", "--no-progress")
    assert merged.returncode == 0, merged.stderr
    assert "merged 1 shard store into" in merged.stderr and "5 videos" in merged.stderr and "yet" not in merged.stderr
    unsharded = run_cli(videos, "--out", tmp_path / "s0.h5", *common)  # a whole run into a shard's store
    assert unsharded.returncode == 2 and "s0.h5 holds shard 0/2 of a split extraction" in unsharded.stderr
    with FeatureStore(tmp_path / "whole.h5") as one, FeatureStore(tmp_path / "all.h5") as joined:
        assert joined.video_ids() == one.video_ids()
        for video_id in one.video_ids():  # --batch-size 1: each frame alone through the model, bit for bit
            a, b = one.track(video_id, "clip"), joined.track(video_id, "clip")
            assert np.array_equal(a.features, b.features) and np.array_equal(a.timestamps, b.timestamps)
        assert joined.recipes() == one.recipes()
    with FeatureStore(tmp_path / "s0.h5") as shard:
        record = shard.provenance_record("clip")
        track = shard.track(shard.video_ids()[0], "clip")
    other = {"clip": {**record, "recipe": {**record["recipe"], "frames.fps": 2.0}}}  # as --fps 2 would record
    _commit(tmp_path / "s9.h5", other, VideoRecord("clip9", {"duration": 1.0}, {"clip": track}))
    refused = run_cli("merge", tmp_path / "s0.h5", tmp_path / "s9.h5", "--out", tmp_path / "bad.h5")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"img-extract: error: {tmp_path / 's0.h5'} and {tmp_path / 's9.h5'} hold 'clip' features made differently "
        "(frames.fps: 1.0 -> 2.0); merge only the shards of one extraction"
    ]
    wrong = run_cli(videos, "--out", tmp_path / "x.h5", "--shard", "2/2")
    assert wrong.returncode == 2 and "--shard 2/2: need 0 <= i < N" in wrong.stderr
