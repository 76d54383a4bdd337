"""`img-extract manifest NAME --videos DIR`: the video manifest img-extract reads, with the missing ids listed."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from extract.cli.manifest import manifest_command
from extract.media.sources import read_manifest
from manifests.registry import load_dataset
from manifests.video_manifest import match_video_files
from tests.conftest import cli_entry
from tests.full_disk import run_on_full_disk
from tests.testdata import annotations_dir

DATA = annotations_dir()


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")


def test_charades_manifest_lists_present_videos_and_the_missing_ones(tmp_path: Path) -> None:
    videos = tmp_path / "Charades_v1_480"
    _touch(videos, "AO8RW.mp4", "sub/Y6R7T.mp4", "3MSZA.webm", "notes.txt", ".hidden.mp4")
    out = tmp_path / "charades.jsonl"
    result = CliRunner().invoke(
        manifest_command, ["charades-sta", "--videos", str(videos), "--out", str(out), "--data-dir", str(DATA)]
    )
    assert result.exit_code == 1, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["video_id"] for line in lines] == ["AO8RW", "Y6R7T", "3MSZA"]
    assert lines[1]["path"] == str((videos / "sub" / "Y6R7T.mp4").resolve())
    missing = (tmp_path / "charades.missing.txt").read_text().split()
    assert len(missing) == 6672 - 3 and "AO8RW" not in missing
    assert "3 of 6672 videos found" in result.output and "6669 videos missing on disk" in result.output
    assert [s.video_id for s in read_manifest(out)] == ["AO8RW", "Y6R7T", "3MSZA"]  # what img-extract reads


def test_split_option_restricts_the_ids_and_all_present_exits_zero(tmp_path: Path) -> None:
    test_ids = sorted({r.video_id for r in load_dataset("charades-am", DATA).split("test")})
    _touch(tmp_path / "v", *(f"{video_id}.mp4" for video_id in test_ids))
    out = tmp_path / "am.jsonl"
    args = ["charades-am", "--videos", str(tmp_path / "v"), "--out", str(out), "--split", "test"]
    result = CliRunner().invoke(manifest_command, [*args, "--data-dir", str(DATA)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 592 and not (tmp_path / "am.missing.txt").exists()


def test_activitynet_ids_match_youtube_file_names_without_the_prefix(tmp_path: Path) -> None:
    _touch(tmp_path, "QOlSCBRmfWY.mkv", "v_uqiMw7tQ1Cc.mp4")
    found, missing = match_video_files(["v_QOlSCBRmfWY", "v_uqiMw7tQ1Cc", "v_absent"], tmp_path)
    assert found == {"v_QOlSCBRmfWY": tmp_path / "QOlSCBRmfWY.mkv", "v_uqiMw7tQ1Cc": tmp_path / "v_uqiMw7tQ1Cc.mp4"}
    assert missing == ["v_absent"]


def test_custom_annotations_give_their_videos(tmp_path: Path) -> None:
    annotations = tmp_path / "my.jsonl"
    annotations.write_text('{"video_id": "clip1", "start": 0, "end": 2, "query": "a dog barks"}\n')
    _touch(tmp_path / "v", "clip1.mov")
    out = tmp_path / "m.jsonl"
    result = CliRunner().invoke(
        manifest_command, [str(annotations), "--videos", str(tmp_path / "v"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["video_id"] == "clip1"


def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(manifest_command, ["charades", "--videos", str(tmp_path), "--out", str(tmp_path / "m")])
    assert unknown.exit_code == 2
    assert unknown.output.strip().splitlines() == [
        "img-extract: error: unknown dataset 'charades'; known: charades-sta, charades-am, activitynet "
        "(or a custom .jsonl file)"
    ]
    args = ["charades-sta", "--videos", str(tmp_path), "--out", str(tmp_path / "m"), "--split", "val"]
    bad_split = runner.invoke(manifest_command, [*args, "--data-dir", str(DATA)])
    assert bad_split.exit_code == 2 and "--split val: charades-sta has the splits test, train" in bad_split.output


def test_a_manifest_that_does_not_fit_on_the_disk_is_one_line_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """It used to end in a traceback and leave .m.jsonl.PID.tmp behind: the one atomic writer removes it."""
    (tmp_path / "v").mkdir()
    for name in ("cooking_01", "cooking_02"):
        (tmp_path / "v" / f"{name}.mp4").write_bytes(b"not decoded here")
    annotations = tmp_path / "mine.jsonl"
    annotations.write_text(
        '{"video_id": "cooking_01", "start": 1, "end": 2, "query": "a", "duration": 9}\n'
        '{"video_id": "cooking_02", "start": 1, "end": 2, "query": "b", "duration": 9}\n'
    )
    disk = tmp_path / "disk"
    command = [*cli_entry(), "manifest", annotations, "--videos", tmp_path / "v", "--out", disk / "m.jsonl"]
    run = run_on_full_disk(disk, command)
    assert run.result.returncode == 2, run.result.stderr
    assert run.result.stderr.strip().splitlines() == [
        f"img-extract: error: cannot write the manifest {disk / 'm.jsonl'} (No space left on device); choose a "
        "writable --out"
    ]
    assert run.left == []
