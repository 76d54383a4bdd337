"""The videos folder scan: links to folders are followed, each folder is entered once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from extract.media.sources import scan_folder
from manifests.video_manifest import match_video_files

REPO = Path(__file__).resolve().parents[1]


def _videos(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    return folder


def test_a_link_back_to_a_parent_lists_each_video_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    videos = _videos(tmp_path / "videos", "a.mp4", "sub/b.mp4")
    (videos / "sub" / "loop").symlink_to("..")
    assert [(s.video_id, s.path) for s in scan_folder(videos)] == [
        ("a", videos / "a.mp4"),
        ("sub/b", videos / "sub" / "b.mp4"),
    ]
    assert f"{videos / 'sub' / 'loop'} links to {videos}, which is scanned already; skipped" in caplog.text


def test_two_link_loops_end_the_scan(tmp_path: Path) -> None:
    videos = _videos(tmp_path / "videos", "a.mp4")
    (videos / "x").symlink_to(".")
    (videos / "y").symlink_to(".")
    script = (
        "import json, sys; from pathlib import Path; from extract.media.sources import scan_folder; "
        "from manifests.video_manifest import match_video_files; folder = Path(sys.argv[1]); "
        "print(json.dumps([[s.video_id for s in scan_folder(folder)], list(match_video_files(['a'], folder)[0])]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Following both links blindly visits 2**40 folders: the scan would never end.
    done = subprocess.run([sys.executable, "-c", script, videos], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["a"], ["a"]]


def test_a_second_way_into_a_folder_keeps_the_folders_own_path(tmp_path: Path) -> None:
    videos = _videos(tmp_path / "videos", "b/c.mp4", "d/e.mp4")
    (videos / "a").symlink_to("b")  # sorted before b
    (videos / "d" / "f").symlink_to("../b")
    assert [s.video_id for s in scan_folder(videos)] == ["b/c", "d/e"]
    found, missing = match_video_files(["c", "e"], videos)
    assert found == {"c": videos / "b" / "c.mp4", "e": videos / "d" / "e.mp4"} and not missing


def test_a_link_to_a_folder_elsewhere_is_followed_once(tmp_path: Path) -> None:
    elsewhere = _videos(tmp_path / "elsewhere", "x.mp4")
    videos = _videos(tmp_path / "videos", "a.mp4")
    (videos / "one").symlink_to(elsewhere)
    (videos / "two").symlink_to(elsewhere)
    assert [s.video_id for s in scan_folder(videos)] == ["a", "one/x"]
