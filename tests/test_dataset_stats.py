"""`img-extract datasets stats` (Table 8, Figure 9) from annotations alone, and `img-train cost` (Table 12), through
the real commands: hand-computed statistics of a custom JSONL, the published Charades-STA counts, the plot, and the
published model's parameter counts per module."""

from __future__ import annotations

import json
from pathlib import Path

from img_model.data.synthetic import write_audio_matters
from tests.conftest import run_cli
from tests.img_cli import TINY_SPEC, run_img_train
from tests.testdata import annotations_dir


def _write(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_stats_of_a_custom_jsonl_are_computed_by_hand(tmp_path: Path) -> None:
    queries = _write(
        tmp_path / "q.jsonl",
        {"video_id": "a", "start": 0, "end": 5, "duration": 20, "query": "a dog barks", "split": "train"},
        {"video_id": "a", "start": 10, "end": 20, "duration": 20, "query": "the dog's owner waves", "split": "train"},
        {"video_id": "b", "start": 2, "end": 42, "duration": 80, "query": "someone sings a song", "split": "test"},
    )
    result = run_cli("datasets", "stats", queries, "--json", "--plot", tmp_path / "stats.svg")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["splits"]
    train, test, every = stats["train"], stats["test"], stats["all"]
    assert (train["queries"], train["videos"], test["queries"], every["videos"]) == (2, 1, 1, 2)
    assert train["moment_duration"]["mean"] == 7.5 and train["moment_duration"]["std"] == 2.5
    assert train["moment_ratio"]["mean"] == (0.25 + 0.5) / 2 and test["moment_ratio"]["median"] == 0.5
    assert train["video_duration"]["mean"] == 20  # one video counted once, not once per query
    assert every["video_duration"]["mean"] == 50
    assert train["query_words"]["mean"] == 3.5  # "the dog's owner waves": 4 words
    assert train["vocabulary"] == 7  # a, dog, barks, the, dog's, owner, waves
    assert b"<svg" in (tmp_path / "stats.svg").read_bytes()


def test_stats_of_a_custom_jsonl_without_durations_read_them_from_the_store(tmp_path: Path) -> None:
    data = write_audio_matters(tmp_path / "data", TINY_SPEC)
    without = tmp_path / "q.jsonl"
    rows = [json.loads(line) for line in data.annotations.read_text().splitlines()]
    _write(without, *({k: v for k, v in row.items() if k != "duration"} for row in rows))
    refused = run_cli("datasets", "stats", without)
    assert refused.returncode == 2 and "no duration for video" in refused.stderr
    result = run_cli("datasets", "stats", without, "--store", data.features, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["splits"]["all"]["queries"] == len(rows)


def test_stats_of_charades_sta_give_its_published_counts_and_a_plot(tmp_path: Path) -> None:
    plot = tmp_path / "charades.png"
    result = run_cli("datasets", "stats", "charades-sta", "--data-dir", annotations_dir(), "--plot", plot)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert lines["train"][1:3] == ["12408", "5338"] and lines["test"][1:3] == ["3720", "1334"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    unknown = run_cli("datasets", "stats", "charades-sta", "--data-dir", annotations_dir(), "--split", "val")
    assert unknown.returncode == 2 and "has the splits train, test" in unknown.stderr


def test_cost_counts_the_published_model_per_module_as_table_12_groups_them() -> None:
    result = run_img_train("cost", "--json", "--video-steps", "32", timeout=300)
    assert result.returncode == 0, result.stderr
    cost = json.loads(result.stdout)
    # img_spec.md §3.4, measured in the authors' code: 3,774,314 trainable; AIP 513; MGF 1,913,728
    assert cost["total"]["trainable"] == 3_774_314
    assert cost["groups"]["AIP"]["trainable"] == 513 and cost["groups"]["MGF"]["trainable"] == 1_913_728
    assert cost["modules"]["audio_importance"]["trainable"] == 513
    flops = {name: entry["flops"] for name, entry in cost["modules"].items()}
    assert all(value > 0 for value in flops.values()), flops
    assert sum(flops.values()) == cost["total"]["flops"]  # every FLOP inside one of the top-level modules


def test_cost_of_a_recipe_counts_its_model(tmp_path: Path) -> None:
    recipe = tmp_path / "small.toml"
    recipe.write_text("[model]\ndim = 64\nnum_heads = 4\n")
    result = run_img_train("cost", "--config", recipe, "--video-steps", "16", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    cost = json.loads(result.stdout)
    assert cost["groups"]["AIP"]["trainable"] == 4 * 64 + 1  # Linear(4·dim → 1): 513 at the published dim 128
    assert cost["inputs"] == {"batch": 1, "video_steps": 16, "query_words": 10}
    refused = run_img_train("cost", "--config", recipe, "--video-steps", "999")
    assert refused.returncode == 2 and "at most max_pos_len 128" in refused.stderr
