"""The full log of a command in a file (failure tracebacks included), as every img-vmr command keeps one:
OUT.parts/extract.log for img-extract runs, RUN/train.log for img-train."""

from __future__ import annotations

import logging
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


class LogFile(logging.FileHandler):
    """Appends every message to a file, opened by the first one. When the file cannot be written (a full disk)
    it goes quiet instead of printing a logging traceback per message; the console still has what matters."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8", errors="backslashreplace", delay=True)
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True


def attach_log_file(path: Path) -> logging.Handler:
    """Log everything of img-vmr (debug level, tracebacks) to `path` too; remove the handler to stop."""
    handler = LogFile(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger("img_vmr").addHandler(handler)
    return handler
