"""`img-extract inspect`: what a store holds, as a dict (for --json) and as text."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from extract.store import FeatureStore


def describe(store_path: Path) -> dict[str, Any]:
    with FeatureStore(store_path) as store:
        features: dict[str, Any] = {}
        for name in store.feature_names():
            holders = [v for v in store.video_ids() if name in store.feature_names(v)]
            latest = store.part_provenance(holders[-1], name) if holders else {}
            features[name] = {
                "videos": len(holders),
                "recipe": latest.get("recipe", {}),
                "software": latest.get("software", {}),
                "runtime": latest.get("runtime", {}),
            }
        videos = []
        for video_id in store.video_ids():
            meta = store.metadata(video_id)
            rows = {name: list(store.track_shape(video_id, name)) for name in store.feature_names(video_id)}
            videos.append(
                {
                    "video_id": video_id,
                    "duration": meta.get("duration"),
                    "fps": meta.get("fps"),
                    "frames": meta.get("frame_count"),
                    "size": f"{meta['width']}x{meta['height']}" if meta.get("width") else "?",
                    "has_audio": bool(meta.get("has_audio")),
                    "truncated": bool(meta.get("truncated")),
                    "tracks": rows,
                }
            )
        return {
            "store": str(store_path),
            "parts": len(store.parts),
            "corrupt_parts": [f"{p.name}: {why}" for p, why in store.corrupt_parts],
            "videos": len(store),
            "without_audio": sum(not v["has_audio"] for v in videos),
            "truncated": [v["video_id"] for v in videos if v["truncated"]],
            "failed": len(store.failures()),
            "features": features,
            "failures": [dataclasses.asdict(f) for f in store.failures()],
            "per_video": videos,
        }


def render(report: dict[str, Any], max_videos: int) -> str:
    lines = [
        f"store    {report['store']}  ({report['parts']} parts)",
        f"videos   {report['videos']} extracted, {report['without_audio']} without audio, {report['failed']} failed"
        + (f", {len(report['truncated'])} truncated" if report["truncated"] else ""),
    ]
    if report["truncated"]:
        lines.append(
            f"TRUNCATED {', '.join(report['truncated'])}: the file ends before its header says; re-download, "
            "then img-extract --retry-failed extracts them again"
        )
    lines += [f"CORRUPT  {entry}" for entry in report["corrupt_parts"]]
    for name, info in report["features"].items():
        lines.append(f"\nfeature {name}: {info['videos']} videos")
        for key, value in sorted(info["recipe"].items()):
            lines.append(f"  {key:<28} {value}")
        for key, value in sorted({**info["software"], **info["runtime"]}.items()):
            lines.append(f"  {key:<28} {value}")
    if report["failures"]:
        lines.append("\nfailures:")
        lines += [
            f"  {f['video_id']}  [{f['stage']}] {','.join(f['features'])}: {f['message']}" for f in report["failures"]
        ]
    shown = report["per_video"] if max_videos == 0 else report["per_video"][:max_videos]
    if shown:
        lines.append("\nvideo_id  duration_s  fps  frames  size  audio  rows")
        for v in shown:
            rows = ", ".join(f"{k} {'x'.join(map(str, shape))}" for k, shape in v["tracks"].items())
            lines.append(
                f"  {v['video_id']}  {_number(v['duration'])}  {_number(v['fps'])}  {v['frames'] or '?'}  {v['size']}  "
                f"{'yes' if v['has_audio'] else 'no'}  {rows}{'  TRUNCATED' if v['truncated'] else ''}"
            )
        hidden = len(report["per_video"]) - len(shown)
        if hidden:
            lines.append(f"  ... {hidden} more (--videos 0 shows all)")
    return "\n".join(lines)


def _number(value: Any) -> str:
    """Two decimals, or ? for what a store does not know (features imported without their videos)."""
    return f"{value:.2f}" if isinstance(value, int | float) else "?"
