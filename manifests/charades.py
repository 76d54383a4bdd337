"""Charades-STA and Charades-AudioMatter annotation files (img_spec.md §1.2, §1.3).

`VID START END##qid_N##sentence` per line, durations from charades.json. The published loader strips each
line, skips empty ones, splits on "##" and the video part on spaces, then clips start to >= 0 and end to
<= duration; nothing else is dropped (end > duration happens 1,802 / 562 / 197 times in train / test / AM).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from manifests.errors import ManifestError
from manifests.records import QueryRecord, clip_span


def parse_durations(text: str, source: str) -> dict[str, float]:
    """charades.json: {vid: {subset, duration, actions}} -> {vid: duration}."""
    try:
        entries = json.loads(text)
        return {video_id: float(entry["duration"]) for video_id, entry in entries.items()}
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"{source}: not a Charades duration file ({type(error).__name__}: {error})") from None


def parse_queries(text: str, durations: Mapping[str, float], split: str, source: str) -> tuple[list[QueryRecord], int]:
    """The records of one `_qid.txt` file in file order, and how many spans were clipped to [0, duration]."""
    records, clipped, missing = [], 0, []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split("##")
        if len(fields) != 3 or not fields[1].startswith("qid_"):
            raise ManifestError(f"{source} line {number}: expected 'VID START END##qid_N##sentence'")
        video_info, qid, sentence = fields
        try:
            video_id, start_text, end_text = video_info.split(" ")
            start, end = float(start_text), float(end_text)
        except ValueError:
            raise ManifestError(f"{source} line {number}: expected 'VID START END' before '##'") from None
        if video_id not in durations:
            missing.append(video_id)
            continue
        duration = durations[video_id]
        start, end, changed = clip_span(start, end, duration)
        clipped += changed
        records.append(QueryRecord(qid, video_id, start, end, duration, sentence.strip(), split))
    if missing:
        raise ManifestError(
            f"{source}: {len(missing)} queries name videos without a duration in charades.json "
            f"(first: {', '.join(sorted(set(missing))[:5])})"
        )
    return records, clipped
