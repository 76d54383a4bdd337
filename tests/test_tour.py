"""img-pipeline tour: the learning check made a product command. conftest's `learning_check` runs it once per
pytest run (`img-pipeline tour --out tour --no-progress`, tests/img_cli.py); these tests read what it printed and
wrote, and run it again only on copies or on folders of their own."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from img_model.data.synthetic import FAMILIES, family_of
from tests.img_cli import LearningCheck, run_img_pipeline


def _table(summary: str) -> dict[str, list[str]]:
    """The tour's table: family (or "all") -> its cells (queries, fused, visual, audio, importance)."""
    rows = {}
    for line in summary.splitlines():
        cells = line.split()
        if cells and cells[0] in (*FAMILIES, "all") and len(cells) >= 6 and cells[1].isdigit():
            rows[cells[0]] = cells[1:6]
    return rows


def _r1(rows: list[dict], branch: str) -> str:
    return f"{100 * sum(row['branches'][branch]['iou'] >= 0.5 for row in rows) / len(rows):.1f}"


@pytest.mark.slow
def test_the_tour_prints_each_family_s_r1_per_branch_and_audio_importance(learning_check: LearningCheck) -> None:
    table, rows = _table(learning_check.summary), learning_check.rows()
    assert set(table) == {*FAMILIES, "all"}, learning_check.summary
    for family in FAMILIES:
        members = [row for row in rows if family_of(row["video_id"]) == family]
        importance = sum(row["audio_importance"] for row in members) / len(members)
        expected = [str(len(members)), _r1(members, "fused"), _r1(members, "visual"), _r1(members, "audio")]
        assert table[family] == [*expected, f"{importance:.3f}"], family
    assert table["all"][:2] == [str(len(rows)), _r1(rows, "fused")]
    # what the tour shows is what the model learnt: the audio is trusted where only the audio marks the moment
    assert float(table["audio"][4]) > float(table["visual"][4])


@pytest.mark.slow
def test_the_tour_says_where_its_report_is_and_what_to_run_next(learning_check: LearningCheck) -> None:
    lines = learning_check.summary.splitlines()  # img-train's own tables first, then the tour's summary
    (first,) = [line for line in lines if line.startswith("tour: ")]
    assert re.fullmatch(r"tour: IMG trained on synthetic features and evaluated on 36 test queries in \d+ s", first)
    tour = learning_check.report.parent
    assert f"report: {tour / 'report.html'} (open it in a browser: every query on its timeline)" in lines
    assert learning_check.report.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html>")
    assert any(line.strip().startswith(f"img-eval {tour / 'run' / 'best.pt'} --drop-audio") for line in lines)
    assert any(line.strip().startswith("img-extract videos/ --out feats.h5") for line in lines)


@pytest.mark.slow
def test_the_tour_run_again_skips_every_step_and_prints_the_same_table(
    learning_check: LearningCheck, tmp_path: Path
) -> None:
    tour = tmp_path / "tour"
    shutil.copytree(learning_check.report.parent, tour)  # copy2: the times that say what is done are kept
    again = run_img_pipeline("tour", "--out", tour, "--no-progress", timeout=120)
    assert again.returncode == 0, again.stderr
    steps = [line for line in again.stderr.splitlines() if line.startswith("img-pipeline: [")]
    assert [line.split("] ")[1].split(":")[0] for line in steps] == ["data", "train", "eval"], again.stderr
    assert all(": skipped, " in line for line in steps), again.stderr
    assert _table(again.stdout) == _table(learning_check.summary)


def test_a_folder_that_holds_something_else_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not a tour\n")
    refused = run_img_pipeline("tour", "--out", tmp_path, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"img-pipeline: error: --out {tmp_path} is not empty and holds no tour; give a new or empty folder"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine.txt"]
