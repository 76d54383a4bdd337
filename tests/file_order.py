"""The suite's files in the order that ends a 2-worker run soonest: the longest first (a pytest plugin).

xdist's `--dist loadfile` hands whole files to whichever worker is free, in collection order (pyproject's addopts
turn off its own reordering by test count, `--no-loadscope-reorder`). With the longest files first, the run ends on
short files and neither worker waits long for the other's last file. How long each file takes comes from
tests/file_durations.json (setup + call + teardown of its tests, seconds), which `pytest --record-file-durations`
updates at the end of a passing run (the files that ran); a file not in it yet counts as long when it has a `slow`
test (so a new slow file starts early) and as short otherwise.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("file_durations.json")
RECORD = "--record-file-durations"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        RECORD,
        action="store_true",
        help=f"after the run, write each test file's total seconds to {DURATIONS.name} (orders later runs)",
    )


def recorded_durations() -> dict[str, float]:
    try:
        return {str(name): float(seconds) for name, seconds in json.loads(DURATIONS.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def order_longest_first(items: list[pytest.Item]) -> None:
    """Sort `items` in place: files by recorded seconds, longest first; the tests of a file keep their order."""
    recorded = recorded_durations()
    longest = max(recorded.values(), default=0.0)
    slow_files = {item.path.name for item in items if item.get_closest_marker("slow") is not None}

    def seconds(item: pytest.Item) -> float:
        name = item.path.name
        if name in recorded:
            return recorded[name]
        return longest + 1.0 if name in slow_files else 0.0

    items.sort(key=lambda item: -seconds(item))  # stable: a file's tests stay together and in order


class _Recorder:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[Path(report.nodeid.split("::", 1)[0]).name] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if session.testsfailed or not self.seconds:
            return  # a failed or interrupted run's times say little about the next run
        merged = {**recorded_durations(), **{name: round(seconds, 1) for name, seconds in self.seconds.items()}}
        ordered = dict(sorted(merged.items(), key=lambda kv: -kv[1]))
        DURATIONS.write_text(json.dumps(ordered, indent=1) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    is_xdist_worker = hasattr(config, "workerinput")
    if config.getoption(RECORD) and not is_xdist_worker:
        config.pluginmanager.register(_Recorder(), "file-durations-recorder")
