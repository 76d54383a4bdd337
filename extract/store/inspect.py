"""`img-extract inspect`: what a store holds, as a dict (for --json) and as text.

Works on every store: extracted ones, and imported ones whose videos have no probed metadata (shown as "-").
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

from extract.media.probe import stored_duration
from extract.store import FeatureStore


def _size(meta: dict[str, Any]) -> str | None:
    width, height = meta.get("width"), meta.get("height")
    return None if width is None or height is None else f"{width}x{height}"


def describe(store_path: Path) -> dict[str, Any]:
    with FeatureStore(store_path) as store:
        failures = store.failures()
        features: dict[str, Any] = {}
        for name in store.feature_names():
            try:
                record = store.provenance_record(name)
            except KeyError:  # tracks written without provenance
                record = {}
            holding = [v for v in store.video_ids() if name in store.feature_names(v)]
            features[name] = {
                "videos": len(holding),
                "backends": _backends(store, name, holding),
                "failed": len({f.video_id for f in failures if name in f.features}),
                "recipe": record.get("recipe", {}),
                "software": record.get("software", {}),
                "runtime": record.get("runtime", {}),
            }
        videos = []
        for video_id in store.video_ids():
            meta = store.metadata(video_id)
            entry = {
                "video_id": video_id,
                "duration": stored_duration(meta),
                "fps": meta.get("fps"),
                "frames": meta.get("frame_count"),
                "size": _size(meta),
                "has_audio": meta.get("has_audio"),
                "tracks": {name: list(store.track_shape(video_id, name)) for name in store.feature_names(video_id)},
                "failed_tracks": sorted(store.failed_features(video_id)),
            }
            if "truncated" in meta:
                entry["truncated"] = bool(meta["truncated"])
            videos.append(entry)
        return {
            "store": str(store_path),
            "parts": len(store.parts),
            "corrupt_parts": [f"{p.name}: {why}" for p, why in store.corrupt_parts],
            "videos": len(store),
            "without_audio": sum(v["has_audio"] is not None and not v["has_audio"] for v in videos),
            "truncated": sum(bool(v.get("truncated")) for v in videos),
            "failed": len({f.video_id for f in failures}),
            "features": features,
            "failures": [dataclasses.asdict(f) for f in failures],
            "per_video": videos,
        }


def _backends(store: FeatureStore, feature: str, video_ids: list[str]) -> dict[str, int]:
    """{"openvino 2026.4.1": videos, ...}: what computed the feature's rows, over every part holding them (fp32 rows
    of torch and OpenVINO share a store; their recipe is the same)."""
    counts: Counter[str] = Counter()
    for video_id in video_ids:
        runtime = store.part_provenance(video_id, feature).get("runtime", {})
        counts[f"{runtime.get('backend', 'torch')} {runtime.get('backend_version', '')}".strip()] += 1
    return dict(sorted(counts.items()))


def _number(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _audio(value: Any) -> str:
    return "-" if value is None else "yes" if value else "no"


def render(report: dict[str, Any], max_videos: int) -> str:
    counts = f"{report['videos']} extracted, {report['without_audio']} without audio, {report['failed']} failed"
    if report["truncated"]:
        counts += f", {report['truncated']} truncated"
    lines = [f"store    {report['store']}  ({report['parts']} parts)", f"videos   {counts}"]
    lines += [f"DAMAGED  {entry}" for entry in report["corrupt_parts"]]
    for name, info in report["features"].items():
        failed = f", {info['failed']} failed" if info["failed"] else ""
        lines.append(f"\nfeature {name}: {info['videos']} videos{failed}")
        if len(info["backends"]) > 1:
            mixed = ", ".join(f"{backend} ({count} videos)" for backend, count in info["backends"].items())
            lines.append(f"  MIXED BACKENDS: {mixed}; same recipe, rows agree within the golden tolerances")
        for key, value in sorted(info["recipe"].items()):
            lines.append(f"  {key:<28} {value}")
        for key, value in sorted({**info["software"], **info["runtime"]}.items()):
            if key in ("backend", "backend_version") and len(info["backends"]) > 1:
                continue  # the newest part's; the line above names them all
            lines.append(f"  {key:<28} {value}")
    if report["failures"]:
        lines.append("\nfailures (video  tracks  [stage] reason):")
        lines += [
            f"  {f['video_id']}  {','.join(f['features']) or 'all'}  [{f['stage']}] {f['message']}"
            for f in report["failures"]
        ]
    truncated = [v for v in report["per_video"] if v.get("truncated")]
    if truncated:
        lines.append("\ntruncated (the decoded stream ends before the header's duration; re-download these):")
        lines += [f"  {v['video_id']}  {_number(v['duration'], 2)} s in the header" for v in truncated]
    shown = report["per_video"] if max_videos == 0 else report["per_video"][:max_videos]
    if shown:
        lines.append("\nvideo_id  duration_s  fps  frames  size  audio  rows")
        for v in shown:
            rows = ", ".join(f"{k} {'x'.join(map(str, shape))}" for k, shape in v["tracks"].items())
            notes = "".join(f"  {k} FAILED" for k in v["failed_tracks"]) + ("  TRUNCATED" if v.get("truncated") else "")
            lines.append(
                f"  {v['video_id']}  {_number(v['duration'], 2)}  {_number(v['fps'], 2)}  {_text(v['frames'])}  "
                f"{_text(v['size'])}  {_audio(v['has_audio'])}  {rows}{notes}"
            )
        hidden = len(report["per_video"]) - len(shown)
        if hidden:
            lines.append(f"  ... {hidden} more (--videos 0 shows all)")
    return "\n".join(lines)
