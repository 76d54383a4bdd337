"""ActivityNet Captions annotation files (img_spec.md §1.2, §1.3).

{vid: {duration, timestamps: [[s, e], ...], sentences: [...][, qid: [...]]}}. val_1_qid.json and
val_2_qid.json carry the authors' qids; their train_qid.json is not published, so train qids are rebuilt as
qid_0..qid_37420 in file order (videos in file order, sentences in order), which is how the authors numbered
them (val_1 continues at qid_37421). Durations come from the entries; spans are clipped to [0, duration].
The 4 train spans with start >= end are kept, as the published loader keeps them.
"""

from __future__ import annotations

import json

from manifests.errors import ManifestError
from manifests.records import QueryRecord, clip_span, is_number


def parse_queries(text: str, split: str, source: str, number_from: int | None = None) -> tuple[list[QueryRecord], int]:
    """The records of one file in file order and how many spans were clipped.

    number_from=None reads the file's own `qid` lists; an integer numbers the queries qid_N from it instead.
    """
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{source}: not JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(entries, dict):
        raise ManifestError(f"{source}: expected an object {{video_id: {{duration, timestamps, sentences}}}}")
    records, clipped = [], 0
    for video_id, entry in entries.items():
        try:
            duration, spans, sentences = float(entry["duration"]), entry["timestamps"], entry["sentences"]
            qids = entry["qid"] if number_from is None else None
        except (KeyError, TypeError, ValueError):
            fields = "duration, timestamps, sentences" + (", qid" if number_from is None else "")
            raise ManifestError(f"{source}: video {video_id} lacks one of {fields}") from None
        if len(spans) != len(sentences) or (qids is not None and len(qids) != len(sentences)):
            raise ManifestError(f"{source}: video {video_id} has lists of different lengths")
        for k, (span, sentence) in enumerate(zip(spans, sentences, strict=True)):
            if len(span) != 2 or not all(is_number(t) for t in span):
                raise ManifestError(f"{source}: video {video_id} timestamp {k} is not [start, end]")
            if qids is not None:
                qid = str(qids[k])
            else:
                assert number_from is not None
                qid = f"qid_{number_from + len(records)}"
            start, end, changed = clip_span(float(span[0]), float(span[1]), duration)
            clipped += changed
            records.append(QueryRecord(qid, video_id, start, end, duration, str(sentence).strip(), split))
    return records, clipped
