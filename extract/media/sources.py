"""The list of videos to extract: a folder scanned recursively, or a manifest (JSONL or CSV: video_id,path)."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from extract.core.errors import UsageError
from extract.core.files import jsonl_objects

log = logging.getLogger(f"img_vmr.{__name__}")

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts", ".ogv"}
)
MANIFEST_EXTENSIONS = frozenset({".jsonl", ".csv"})


@dataclass(frozen=True)
class VideoSource:
    video_id: str
    path: Path


def _check_unique(sources: list[VideoSource], origin: str) -> list[VideoSource]:
    seen: dict[str, Path] = {}
    for source in sources:
        if source.video_id in seen:
            raise UsageError(
                f"duplicate video id {source.video_id!r} in {origin}: {seen[source.video_id]} and {source.path}; "
                "rename or remove one"
            )
        seen[source.video_id] = source.path
    return sources


def _folder_key(path: str | Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def video_files(folder: Path) -> Iterator[Path]:
    """Every video file under folder, in sorted order, entering each folder once.

    Links to folders are followed, but a folder is entered by one path only: its own path when it lies under
    folder, else the first link to it. A link loop (a link to a parent) or a second link to a folder is skipped
    with a warning; followed blindly, one loop lists each video ~40 times and two make the scan endless.
    """
    real = {_folder_key(root) for root, _, _ in os.walk(folder)}  # reached without links
    entered: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        entered.add(_folder_key(root))
        kept = []
        for name in sorted(dirs):
            path = Path(root) / name
            try:
                key = _folder_key(path)
            except OSError:
                continue
            if key in entered or (path.is_symlink() and key in real):
                log.warning("%s links to %s, which is scanned already; skipped", path, path.resolve())
                continue
            entered.add(key)
            kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS and not name.startswith("."):
                yield Path(root) / name


def folder_video_id(folder: Path, path: Path) -> str:
    """The id of a video file found under folder: its path relative to folder, without extension, '/'-separated."""
    return path.relative_to(folder).with_suffix("").as_posix()


def scan_folder(folder: Path) -> list[VideoSource]:
    """Every video file under folder, with its folder_video_id."""
    sources = []
    for path in video_files(folder):
        sources.append(VideoSource(folder_video_id(folder, path), path))
    if not sources:
        raise UsageError(
            f"no video files under {folder} (looked for {', '.join(sorted(VIDEO_EXTENSIONS))}); "
            "point VIDEOS at the folder that holds them or at a manifest"
        )
    return _check_unique(sources, str(folder))


def _manifest_rows(manifest: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        text = manifest.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"manifest {manifest} is not UTF-8 text; save it as UTF-8") from None
    if manifest.suffix.lower() == ".jsonl":
        objects = jsonl_objects(text, f"manifest {manifest}", "an object with video_id and path")
        return [(number, {k: str(v) for k, v in row.items()}) for number, row in objects]
    reader = csv.DictReader(text.splitlines())
    return [(number, dict(row)) for number, row in enumerate(reader, 2)]


def read_manifest(manifest: Path) -> list[VideoSource]:
    """Rows of video_id,path; relative paths are relative to the manifest's folder."""
    sources = []
    for number, row in _manifest_rows(manifest):
        video_id, path = (row.get("video_id") or "").strip(), (row.get("path") or "").strip()
        if not video_id or not path:
            raise UsageError(f"manifest {manifest} line {number}: needs both video_id and path")
        resolved = Path(path) if Path(path).is_absolute() else manifest.parent / path
        sources.append(VideoSource(video_id, resolved))
    if not sources:
        raise UsageError(f"manifest {manifest} lists no videos")
    return _check_unique(sources, str(manifest))


def video_sources(videos: Path) -> list[VideoSource]:
    """The videos of VIDEOS: a folder scanned recursively, or a manifest."""
    if videos.is_dir():
        return scan_folder(videos)
    if videos.is_file() and videos.suffix.lower() in MANIFEST_EXTENSIONS:
        return read_manifest(videos)
    if videos.is_file():
        raise UsageError(f"{videos} is neither a folder of videos nor a manifest (.jsonl or .csv)")
    raise UsageError(f"{videos} does not exist; pass a folder of videos or a manifest file")
