"""What a split left out and why: queries without features or text, on truncated videos, on videos without audio;
listed in one line each (img-train and img-eval log them, --strict makes them an error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from extract.core.errors import listed


@dataclass
class Coverage:
    """Which queries of a split made it into the dataset, and why the others did not."""

    split: str
    queries: int = 0
    no_video: list[str] = field(default_factory=list)  # qids whose video has no visual features
    missing_track: list[str] = field(default_factory=list)  # qids whose video lacks one of several visual tracks
    truncated: list[str] = field(default_factory=list)  # qids whose video file was cut short when it was extracted
    no_text: list[str] = field(default_factory=list)  # qids missing from the text store or with another sentence
    no_audio_track: list[str] = field(default_factory=list)  # videos said to have audio, but no audio track
    dropped_no_audio: int = 0  # training queries dropped for a video without audio (missing_audio="drop")
    zero_audio: int = 0  # queries read with a zero audio track

    @property
    def kept(self) -> int:
        left_out = len(self.no_video) + len(self.missing_track) + len(self.truncated) + len(self.no_text)
        return self.queries - left_out - self.dropped_no_audio

    def missing_lines(self) -> list[str]:
        lines = []
        if self.no_video:
            lines.append(
                f"{len(self.no_video)} of {self.queries} {self.split} queries have no visual features: "
                f"{listed(self.no_video)}"
            )
        if self.missing_track:
            lines.append(
                f"{len(self.missing_track)} of {self.queries} {self.split} queries are on videos without one of the "
                f"visual tracks read as one: {listed(self.missing_track)}"
            )
        if self.truncated:
            lines.append(
                f"{len(self.truncated)} of {self.queries} {self.split} queries are on videos whose file was "
                "truncated when extracted (their features stop early, the annotations' times do not; "
                f"re-download them, then img-extract --retry-failed): {listed(self.truncated)}"
            )
        if self.no_text:
            lines.append(
                f"{len(self.no_text)} of {self.queries} {self.split} queries are not in the text store "
                f"(or with another sentence): {listed(self.no_text)}"
            )
        if self.no_audio_track:
            lines.append(
                f"{len(self.no_audio_track)} {self.split} videos have audio but no audio features: "
                f"{listed(self.no_audio_track)}"
            )
        return lines

    def summary(self) -> str:
        parts = [f"{self.split}: {self.kept} of {self.queries} queries"]
        if self.dropped_no_audio:
            parts.append(f"{self.dropped_no_audio} dropped (video without audio)")
        if self.zero_audio:
            parts.append(f"{self.zero_audio} with a zero audio track")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "queries": self.queries,
            "kept": self.kept,
            "no_video": len(self.no_video),
            "missing_track": len(self.missing_track),
            "truncated": len(self.truncated),
            "no_text": len(self.no_text),
            "no_audio_track": len(self.no_audio_track),
            "dropped_no_audio": self.dropped_no_audio,
            "zero_audio": self.zero_audio,
        }
