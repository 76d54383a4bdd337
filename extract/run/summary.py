"""What a run did, as counts and failure records, and the lines the user reads at its end."""

from __future__ import annotations

from dataclasses import dataclass, field

from extract.store import FailureRecord


@dataclass
class RunSummary:
    total: int = 0
    done: int = 0  # videos finished with at least one new track (or recorded without audio)
    skipped: int = 0  # videos that had every requested track
    skipped_failed: int = 0  # videos whose missing tracks failed before and were not retried
    no_audio: int = 0
    truncated: list[str] = field(default_factory=list)  # video ids of finished videos whose file is cut short
    truncated_kept: int = 0  # truncated videos already in the store, not extracted again
    frames: int = 0
    units: int = 0
    wall_seconds: float = 0.0
    failures: list[FailureRecord] = field(default_factory=list)
    committed_videos: int = 0  # records really written to the store by this run
    committed_failures: int = 0
    stopped: bool = False  # the run ended early (interrupted, or the store could not be written)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or self.skipped_failed else 0

    def committed(self) -> str:
        """What this run has committed, truthfully, for the last line of a run that stopped."""
        if not self.committed_videos and not self.committed_failures:
            return "nothing was committed in this run"
        videos, failures = self.committed_videos, self.committed_failures
        what = f"{videos} finished video{'s' * (videos != 1)}"
        if failures:
            what += f" and {failures} failure record{'s' * (failures != 1)}"
        return f"{what} {'was' if videos + failures == 1 else 'were'} committed"

    def lines(self) -> list[str]:
        wall = max(self.wall_seconds, 1e-9)
        done = f"{self.done} done"
        if self.stopped:  # finished is not committed: say both (a full disk keeps finished videos from the store)
            done = f"{self.done} finished, {self.committed_videos} committed"
            if self.committed_videos < self.done:
                done += " (the run stopped before the rest was written)"
        out = [
            f"summary: {done}, {self.skipped} skipped (already in store), {len(self.failures)} failed, "
            f"{self.no_audio} without audio; {self.wall_seconds:.1f} s wall, {self.done / wall:.2f} videos/s, "
            f"{self.frames / wall:.1f} frames/s decoded, {self.units / wall:.1f} units/s embedded"
        ]
        if self.skipped_failed:
            out.append(f"{self.skipped_failed} videos failed in an earlier run and were skipped (--retry-failed)")
        if self.truncated:
            shown = ", ".join(self.truncated[:5]) + (", ..." if len(self.truncated) > 5 else "")
            out.append(
                f"{len(self.truncated)} truncated: their video stream ends before their header says ({shown}); "
                "re-download them, then --retry-failed extracts them again"
            )
        if self.truncated_kept:
            out.append(f"{self.truncated_kept} truncated videos in the store were kept (--retry-failed redoes them)")
        out += [f"failed: {f.video_id} [{f.stage}] {','.join(f.features)}: {f.message}" for f in self.failures]
        return out
