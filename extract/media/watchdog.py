"""A decoder's silence, measured: the watchdog that stops a silent ffmpeg, and the progress reports through which
an engine sees that a slow decode is still reading.

Two clocks watch a decode. `Watchdog` kills one ffmpeg process (a probe, a frame or audio pipe) that has sent
nothing for `timeout` seconds while we wait for it. An engine watches its decode workers as a whole; it learns
that a worker's decoder is alive from `progress_reports`: every read from a decoder in that thread (a pipe read, a
probe line, a finished decord call) calls the worker's callback, not only a finished chunk of frames or a window
of audio (at --fps 0.1 a chunk of 32 frames is 320 s of video, longer than any sensible stall limit).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

_reports = threading.local()


@contextlib.contextmanager
def progress_reports(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, every read from a decoder made by this thread calls `callback` (cheap: keep it so)."""
    previous = getattr(_reports, "callback", None)
    _reports.callback = callback
    try:
        yield
    finally:
        _reports.callback = previous


def report_progress() -> None:
    """A decoder driven by this thread just delivered something: tell whoever listens (see progress_reports)."""
    callback = getattr(_reports, "callback", None)
    if callback is not None:
        callback()


class Watchdog:
    """Kills a subprocess when it has sent nothing for `timeout` seconds while we were waiting for it.

    `touch` on every read (it also reports progress to this thread's listener); `pause` while the consumer holds
    what was read (a busy model, a full queue) and `resume` when it asks for more, so only the decoder's own
    silence counts.
    """

    def __init__(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        self._process = process
        self._timeout = timeout
        self._last = time.monotonic()
        self._paused = False
        self._done = threading.Event()
        self.fired = False
        threading.Thread(target=self._watch, name="decoder-watchdog", daemon=True).start()

    def touch(self) -> None:
        self._last = time.monotonic()
        report_progress()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._last = time.monotonic()
        self._paused = False

    def stop(self) -> None:
        self._done.set()

    def finish(self) -> None:
        """Stop watching and end the process if it still runs (its reader stopped early, or failed)."""
        self.stop()
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def _watch(self) -> None:
        while not self._done.wait(min(5.0, self._timeout / 4)):
            if not self._paused and time.monotonic() - self._last > self._timeout:
                self.fired = True
                self._process.kill()
                return
