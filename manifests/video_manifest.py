"""The video list img-extract reads (JSONL lines {"video_id", "path"}) for a dataset's videos found on disk.

A video file matches a dataset id when its name without extension equals the id, anywhere under the folder.
ActivityNet ids carry a "v_" prefix that YouTube downloads usually lack, so "abc.mp4" also matches "v_abc".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from extract.core.errors import UsageError
from extract.core.files import write_atomically
from extract.media.sources import video_files

YOUTUBE_PREFIX = "v_"


def match_video_files(video_ids: Iterable[str], folder: Path) -> tuple[dict[str, Path], list[str]]:
    """({id: path} of the ids with a video file under folder, [ids without one]), both in the ids' order."""
    if not folder.is_dir():
        raise UsageError(f"--videos {folder} is not a folder")
    by_stem: dict[str, Path] = {}
    for path in video_files(folder):
        by_stem.setdefault(path.stem, path)  # the first in sorted order wins for duplicate names
    found, missing = {}, []
    for video_id in dict.fromkeys(video_ids):
        path = by_stem.get(video_id)
        if path is None and video_id.startswith(YOUTUBE_PREFIX):
            path = by_stem.get(video_id[len(YOUTUBE_PREFIX) :])
        if path is None:
            missing.append(video_id)
        else:
            found[video_id] = path
    return found, missing


def write_manifest(found: Mapping[str, Path], out: Path) -> None:
    """Write the JSONL manifest atomically (absolute paths, so the manifest can live anywhere)."""
    lines = "".join(
        json.dumps({"video_id": v, "path": str(p.resolve())}, ensure_ascii=False) + "\n" for v, p in found.items()
    )
    _write(out, lines, "the manifest")


def write_missing(missing: list[str], out: Path) -> None:
    """The ids without a video file, one a line."""
    _write(out, "".join(f"{video_id}\n" for video_id in missing), "the list of missing videos")


def _write(out: Path, text: str, what: str) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, text)
    except OSError as error:
        raise UsageError(f"cannot write {what} {out} ({error.strerror or error}); choose a writable --out") from None
