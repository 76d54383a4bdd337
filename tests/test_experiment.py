"""img-pipeline experiment: seeds x a grid of img-train settings on the synthetic audio/visual families, as users
run it (real img-pipeline, img-train and img-eval subprocesses): the mean ± std tables, the sweep plot, the links
to the run folders, finished runs skipped, a stopped run resumed, bad values refused in one line; and the selection
protocols it compares (fresh slot noise at selection, train_fraction, the refit on train + val)."""

from __future__ import annotations

import csv
import json
import re
import signal
import statistics
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from img_model.checkpoint import read_checkpoint
from img_model.train.run_log import has_final_line, metrics_lines
from pipelines.cli import main
from tests.img_cli import TINY_CONFIG, run_img_pipeline, start_img_pipeline, tiny_dataset

SEEDS = (0, 1, 2)


def recipe_tables(folder: Path, epochs: int = 2) -> str:
    """The tiny training config as [recipe.SECTION] tables, with the synthetic dataset in [recipe.data]."""
    data = tiny_dataset(folder / "data")
    config = re.sub(r"^\[(\w+)\]$", r"[recipe.\1]", TINY_CONFIG, flags=re.M).replace("epochs = 2", f"epochs = {epochs}")
    return (
        config
        + "\n[recipe.data]\n"
        + f'dataset = "{data.annotations}"\nfeatures = ["data/{data.features.name}"]\n'
        + f'visual = "{data.visual}"\naudio = "{data.audio}"\ntext = "data/{data.text.name}"\n'
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Two selection protocols over 3 seeds, run once: validation selection (with the authors' fresh slot noise at
    every selection evaluation) and its refit on all the training videos, each on half the training videos
    (train_fraction). One epoch (two selection evaluations) per run: 12 img-train and img-eval subprocesses, each
    run's cost mostly the start of its processes. (experiment file, DIR, img-pipeline's stdout)."""
    folder = tmp_path_factory.mktemp("sweep")
    experiment = folder / "protocols.toml"
    recipe = recipe_tables(folder, epochs=1).replace("[recipe.train]\n", '[recipe.train]\nselection_noise = "fresh"\n')
    experiment.write_text(
        f'seeds = "0-2"\ntrain_fraction = 0.5\n\n[grid]\n"train.refit" = [false, true]\n\n{recipe}', encoding="utf-8"
    )
    result = run_img_pipeline("experiment", experiment, "--out", folder / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    return experiment, folder / "out", result.stdout


def test_the_sweep_is_tabulated_as_mean_and_std_over_seeds_in_markdown_csv_and_json(
    sweep: tuple[Path, Path, str],
) -> None:
    _, out, stdout = sweep
    assert "6 runs: 6 done, 0 skipped" in stdout
    print((out / "results.md").read_text(encoding="utf-8"))  # the table of the closing note (pytest -s)
    rows = list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))
    assert [(row["train.refit"], row["branch"]) for row in rows] == [
        (refit, branch) for refit in ("false", "true") for branch in ("fused", "visual", "audio")
    ]
    for row in rows:  # each mean and std is that of the three runs' own img-eval reports
        folder = out / row["folder"]
        reports = [json.loads((folder / f"seed-{s}" / "eval.json").read_text()) for s in SEEDS]
        for metric in ("R1@0.5", "mIoU"):
            values = [report["branches"][row["branch"]][metric] for report in reports]
            assert float(row[f"{metric} mean"]) == pytest.approx(statistics.fmean(values), abs=1e-4)
            assert float(row[f"{metric} std"]) == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert row["n"] == "3" and row["missing"] == ""
    table = json.loads((out / "results.json").read_text(encoding="utf-8"))
    fused = table["settings"][1]["branches"]["fused"]
    assert table["settings"][1]["setting"] == {"train.refit": True}
    assert fused["R1@0.7"]["n"] == 3 and len(fused["R1@0.7"]["values"]) == 3
    assert "mean_audio_importance" in fused  # the report's own numbers come with the fused branch
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert markdown.count(" ± ") >= 2 * 3 * 7 and "| train.refit | branch | n | R1@0.3 |" in markdown


def test_each_setting_links_to_its_run_folders(sweep: tuple[Path, Path, str]) -> None:
    _, out, _ = sweep
    markdown = (out / "results.md").read_text(encoding="utf-8")
    links = [part.split(")", 1)[0] for part in markdown.split("](")[1:]]
    assert len(links) == 2 * 3 * (1 + len(SEEDS))  # per setting and branch: the setting's folder, each seed's run
    for link in links:
        assert not Path(link).is_absolute() and (out / link).is_dir()
    assert all((out / link / "best.pt").is_file() for link in links if "/seed-" in link)


def test_a_sweep_of_one_key_is_plotted(sweep: tuple[Path, Path, str]) -> None:
    _, out, _ = sweep
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_running_the_experiment_again_skips_every_finished_run(sweep: tuple[Path, Path, str]) -> None:
    experiment, out, _ = sweep
    checkpoints = sorted(out.glob("runs/*/seed-*/best.pt"))
    before = [path.stat().st_mtime_ns for path in checkpoints]
    # in this process: the command line as users run it is the sweep's own img-pipeline
    result = CliRunner().invoke(main, ["experiment", str(experiment), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "6 runs: 0 done, 6 skipped" in result.stdout
    assert [path.stat().st_mtime_ns for path in checkpoints] == before
    assert "6 finished before (skipped), 0 to run" in result.stderr  # its log is read here ...
    assert "img-train" not in result.stderr and "img-eval" not in result.stderr  # ... and no command ran


def test_runs_of_another_recipe_are_refused_not_mixed_into_the_table(sweep: tuple[Path, Path, str]) -> None:
    experiment, out, _ = sweep
    edited = experiment.with_name("edited.toml")  # renamed too: only the settings count
    edited.write_text(experiment.read_text(encoding="utf-8").replace("epochs = 1", "epochs = 3"), encoding="utf-8")
    result = CliRunner().invoke(main, ["experiment", str(edited), "--out", str(out)])
    assert result.exit_code == 2
    assert "holds a run of another recipe" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_stopped_experiment_resumes_its_run(tmp_path: Path) -> None:
    experiment = tmp_path / "one.toml"
    experiment.write_text("seeds = [0]\n\n" + recipe_tables(tmp_path, epochs=6), encoding="utf-8")
    run = tmp_path / "out" / "runs" / "c00-base" / "seed-0"
    process = start_img_pipeline("experiment", experiment, "--out", tmp_path / "out")
    try:
        deadline = time.monotonic() + 240
        while not (run / "last.pt").is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr
    assert "re-run the same command to continue" in stderr.strip().splitlines()[-1]
    assert (run / "last.pt").is_file() and not has_final_line(run)
    # the same command again, in this process (its img-train and img-eval are subprocesses all the same)
    result = CliRunner().invoke(
        main, ["experiment", str(experiment), "--out", str(tmp_path / "out"), "--devices", "cpu"]
    )
    assert result.exit_code == 0, result.output[-3000:]
    assert "1 runs: 1 done, 0 skipped" in result.stdout
    assert f"img-train --resume {run} --no-progress --device cpu" in (run / "commands.log").read_text(encoding="utf-8")
    assert has_final_line(run) and (run / "eval.json").is_file()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'seeds = [0]\n[grid]\n"model.evnt_num" = [2, 3]\n',
            "[grid] unknown key 'model.evnt_num'; did you mean 'model.event_num'?",
        ),
        ('seeds = [0]\n[grid]\n"train.epochs" = [0, 2]\n', "[grid] 'train.epochs' = 0: [train] epochs must be"),
        ("seeds = [0, -1]\n", "seeds: -1 is not a whole number"),
        (
            "seeds = [0]\ntrain_fraction = 1.5\n",
            "train_fraction = 1.5: [train] train_fraction must be a finite number above 0",
        ),
        ("seed = [0]\n", "unknown key 'seed'; did you mean 'seeds'?"),
        (
            'seeds = [0]\n[grid]\n"train.refit" = [true]\n"train.select_on" = ["test"]\n',
            "refit needs select_on = 'val'",
        ),
    ],
)
def test_bad_experiment_values_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    experiment = tmp_path / "bad.toml"
    experiment.write_text(text + "\n[recipe.train]\nepochs = 2\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["experiment", str(experiment), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(experiment) in lines[0] and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_the_refit_setting_retrains_on_all_training_videos_for_the_selected_steps(
    sweep: tuple[Path, Path, str],
) -> None:
    """train_fraction keeps half the training videos; the refit setting trains a second model on those and the
    held-out ones for the step validation selected, and evaluates it instead of the selected one; selection with
    fresh slot noise is recorded in every evaluation."""
    _, out, _ = sweep
    for seed in SEEDS:
        plain, refit = (out / "runs" / name / f"seed-{seed}" for name in ("c00-refit=false", "c01-refit=true"))
        assert json.loads((plain / "eval.json").read_text())["checkpoint"] == str(plain / "best.pt")
        assert json.loads((refit / "eval.json").read_text())["checkpoint"] == str(refit / "refit" / "best.pt")
        selecting = [entry for _, entry in metrics_lines(refit / "metrics.jsonl")]
        assert {entry["selection_noise"] for entry in selecting if entry["kind"] == "eval"} == {"fresh"}
        best_step = next(entry["best_step"] for entry in selecting if entry["kind"] == "final")
        final = next(entry for _, entry in metrics_lines(refit / "refit" / "metrics.jsonl") if entry["kind"] == "final")
        assert final["refit_steps"] == best_step == final["step"]
        trained = read_checkpoint(refit / "last.pt").training["data"]  # type: ignore[index]
        refitted = read_checkpoint(refit / "refit" / "last.pt").training["data"]  # type: ignore[index]
        assert refitted["train_queries"] > trained["train_queries"] and refitted["select_split"] == "test"
        assert "training on 50% of the training videos" in (plain / "train.log").read_text(encoding="utf-8")
        # img-eval on the recipe's [runtime] threads = 1, as its training
        assert f"img-eval {refit / 'refit' / 'best.pt'} --json --no-progress --threads 1 >" in (
            refit / "commands.log"
        ).read_text(encoding="utf-8")


def test_fresh_selection_noise_draws_new_slots_at_each_seed_and_only_inside_the_selection_evaluation() -> None:
    import torch

    from img_model.train.trainer import slot_noise_drawn
    from tests.test_img_options import TINY, make_model, random_batch, run

    model, inputs = make_model(TINY).eval(), random_batch(TINY)
    deterministic = run(model, inputs).start_logits_av
    draws = {}
    with slot_noise_drawn(model):
        for seed in (1, 2, 1):
            torch.manual_seed(seed)
            draws.setdefault(seed, []).append(run(model, inputs).start_logits_av)
    assert not torch.equal(draws[1][0], deterministic)
    assert not torch.equal(draws[1][0], draws[2][0])
    assert torch.equal(draws[1][0], draws[1][1])  # seeded by (seed, step): a resumed run draws the same
    assert torch.equal(run(model, inputs).start_logits_av, deterministic)
