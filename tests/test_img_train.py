"""img-train: configuration, optimiser groups, checkpoints, exact resume, divergence, and the run folder."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract.core.errors import UsageError
from extract.store import StoreWriter, Track, VideoRecord
from img_model.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from img_model.cli.train import main as img_train
from img_model.data.synthetic import SyntheticDataset
from img_model.network.config import IMGConfig
from img_model.network.model import IMG
from img_model.network.optim import authors_rule_decays, decay_split, linear_decay, make_optimizer
from img_model.train.batches import EpochBatches, evaluation_steps
from img_model.train.config import DATA_DERIVED, TrainingRunConfig, read_toml, resolve, to_toml
from img_model.train.seeding import rng_state, set_rng_state
from tests.golden import golden_tensors
from tests.img_cli import TINY_CONFIG, run_img_eval, run_img_train, start_img_train, tiny_dataset, train_args
from tests.made_once import made_once
from tests.test_img_golden import SMALL

NOT_LEARNED = ("pe.pe", "pad_vec", "glove_vec")  # buffers in the authors' model or frozen (requires_grad False)


def tiny_and_straight(factory: pytest.TempPathFactory) -> tuple[SyntheticDataset, subprocess.CompletedProcess[str]]:
    """The tiny dataset and its run trained straight through (2 epochs of 2 steps, last.pt after each): the run
    every resumed one must equal. Made once per pytest run for this file and test_img_disk_full.py (neither
    changes them: tests/made_once.py)."""

    def make(folder: Path) -> tuple[SyntheticDataset, subprocess.CompletedProcess[str]]:
        tiny = tiny_dataset(folder / "tiny")
        result = run_img_train(*train_args(tiny, folder / "straight"))
        assert result.returncode == 0, result.stderr
        return tiny, result

    return made_once(factory, "tiny-straight-run", make)


def tiny_stopped(factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The same tiny run stopped after its first epoch through the CLI (`--stop-after 1`): the folder and the
    invocation. Made once per pytest run; a test that resumes it copies the folder first (tests/made_once.py)."""

    def make(folder: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
        result = run_img_train(*train_args(tiny_and_straight(factory)[0], folder / "run", "--stop-after", "1"))
        assert result.returncode == 0, result.stderr
        return folder / "run", result

    return made_once(factory, "tiny-stopped-run", make)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_and_straight(tmp_path_factory)[0]


# --- configuration --------------------------------------------------------------------------------------------


def test_dataset_defaults_are_the_papers() -> None:
    charades = resolve(overrides={"data": {"dataset": "charades-sta"}})
    anet = resolve(overrides={"data": {"dataset": "activitynet"}})
    assert (charades.objective.pseudo_label_threshold, charades.objective.pseudo_label_temperature) == (0.2, 3.0)
    assert (anet.objective.pseudo_label_threshold, anet.objective.pseudo_label_temperature) == (0.1, 2.0)
    assert (charades.train.epochs, charades.train.batch_size, charades.train.learning_rate) == (100, 16, 5e-4)
    assert (charades.train.evals_per_epoch, charades.train.select_on, charades.train.seed) == (2, "val", 0)


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[train]\nepochs = 7\nbatch_size = 4\n[objective]\npseudo_label_threshold = 0.3\n")
    run = resolve(config, {"data": {"dataset": "activitynet"}, "train": {"epochs": 9, "batch_size": None}})
    assert (run.train.epochs, run.train.batch_size) == (9, 4)
    assert run.objective.pseudo_label_threshold == 0.3 and run.objective.pseudo_label_temperature == 2.0


def test_resolved_config_written_as_toml_reads_back_to_the_same_run(tmp_path: Path) -> None:
    derived = {"video_feature_dim": 24, "audio_feature_dim": 20, "glove_words": 7, "word_dim": 8}
    run = resolve(
        overrides={"data": {"dataset": "x.jsonl", "features": ("a.h5", "b.h5")}, "train": {"seed": 3}},
        derived_model=derived,
    )
    path = tmp_path / "config.toml"
    path.write_text(to_toml(run, header="a run"))
    assert resolve(path, derived_model=derived) == run
    assert not DATA_DERIVED & set(read_toml(path)["model"])  # input sizes are comments: the data sets them


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[trian]\nepochs = 1\n", r"unknown section \[trian\]"),
        ("[train]\nepoch = 1\n", r"\[train\] has no setting 'epoch'"),
        ("[train]\nepochs = 'ten'\n", r"\[train\] epochs must be a whole number, not 'ten'"),
        ("[train]\nselect_on = 'dev'\n", "select_on must be 'val' or 'test'"),
        ("[model]\nvideo_feature_dim = 5\n", "set by the data"),
        ("[train\n", "not valid TOML"),
    ],
    ids=["section", "key", "type", "choice", "derived", "syntax"],
)
def test_bad_config_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as error:
        resolve(path, {"data": {"dataset": "charades-sta"}})
    assert "\n" not in str(error.value)


# --- optimiser ------------------------------------------------------------------------------------------------


def test_weight_decay_groups_are_the_authors_by_meaning() -> None:
    """The authors' rule on their names (the golden checkpoint's keys) and our groups hold the same tensors."""
    official = [key for key in golden_tensors("img/small", 401) if not key.endswith(NOT_LEARNED)]
    theirs_decayed = {key for key in official if authors_rule_decays(key)}
    from img_model.network.convert import mapping_table

    to_official = {rule.ours: rule.official for rule in mapping_table(SMALL)}
    decayed, exempt = decay_split(IMG(SMALL))
    assert {to_official[name] for name in decayed} == theirs_decayed
    assert {to_official[name] for name in exempt} == set(official) - theirs_decayed
    assert "event_fusion.audio_slots.input_norm.weight" in decayed  # their norm_input: decayed, as in their runs
    naive = [name for name in exempt if authors_rule_decays(name)]  # the rule on our names would decay these
    assert len(naive) == 54 and all("norm" in name for name in naive)


def test_learning_rate_decays_linearly_to_zero_per_step() -> None:
    model = IMG(SMALL)
    optimizer = make_optimizer(model, 5e-4, 0.01)
    scheduler = linear_decay(optimizer, 4)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([5e-4, 3.75e-4, 2.5e-4, 1.25e-4]) and optimizer.param_groups[0]["lr"] == 0
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]


# --- schedule and batches -------------------------------------------------------------------------------------


def test_evaluations_happen_at_half_and_end_of_each_epoch() -> None:
    assert evaluation_steps(776, 2) == [388, 776]  # Charades: kN + N//2 and (k+1)N (§4.7)
    assert evaluation_steps(1, 2) == [1] and evaluation_steps(9, 3) == [3, 6, 9]


def test_epoch_batches_are_a_seeded_permutation_replayable_from_any_batch() -> None:
    batches = EpochBatches(10, 4, seed=0)
    batches.set_epoch(3)
    full = list(batches)
    assert sorted(i for batch in full for _, i in batch) == list(range(10)) and [len(b) for b in full] == [4, 4, 2]
    assert {epoch for batch in full for epoch, _ in batch} == {3}
    batches.set_epoch(3, skip=1)
    assert list(batches) == full[1:] and len(batches) == 2
    batches.set_epoch(4)
    assert list(batches) != full


# --- checkpoints ----------------------------------------------------------------------------------------------


def test_rng_states_round_trip_through_a_checkpoint_file(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(1)
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3))
    save_checkpoint(Checkpoint(IMGConfig(), {}, training={"rng": state}), tmp_path / "c.pt")
    stored = torch.load(tmp_path / "c.pt", weights_only=True)["training"]["rng"]
    torch.manual_seed(2), np.random.seed(2)
    set_rng_state(stored)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    model = IMG(SMALL)
    save_checkpoint(Checkpoint(SMALL, model.state_dict()), path)

    class Unsaveable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(Checkpoint(SMALL, model.state_dict(), metrics={"x": Unsaveable()}), path)
    assert read_checkpoint(path).config == SMALL
    assert list(tmp_path.iterdir()) == [path]


# --- the CLI --------------------------------------------------------------------------------------------------


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same_tensors(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for number, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{number}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), where


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run folder as (step, value) lists, as TensorBoard shows them (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """tiny_and_straight's run (its folder: `_straight_dir`)."""
    return tiny_and_straight(tmp_path_factory)[1]


def _straight_dir(straight: subprocess.CompletedProcess[str]) -> Path:
    return Path(straight.args[straight.args.index("--out") + 1])


def _assert_same_run(straight: Path, resumed: Path) -> None:
    """Final weights and training state bit for bit, the same evaluations each logged once, the same scalars."""
    a, b = _state(straight / "last.pt"), _state(resumed / "last.pt")
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    _assert_same_tensors(a["training"], b["training"], "training")
    lines = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert lines == [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert _scalars(straight) == _scalars(resumed)
    assert (straight / "summary.txt").read_text() == (resumed / "summary.txt").read_text().replace(
        str(resumed), str(straight)
    )


@pytest.mark.slow
def test_resume_continues_bit_for_bit(
    tiny: SyntheticDataset,
    straight: subprocess.CompletedProcess[str],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    stopped, first = tiny_stopped(tmp_path_factory)  # the first invocation, copied: a run folder may move too
    shutil.copytree(stopped, tmp_path / "resumed")
    assert "stopped after epoch 1" in first.stderr and not (tmp_path / "resumed" / "summary.txt").exists()
    # --stop-after counts the epochs of this invocation; the stores may have moved (a copy staged elsewhere)
    moved = tmp_path / "moved"
    shutil.copytree(tiny.folder, moved)  # each store with its parts
    second = run_img_train(
        "--resume",
        tmp_path / "resumed",
        "--stop-after",
        "1",
        "--no-progress",
        "--features",
        moved / tiny.features.name,
        "--text",
        moved / tiny.text.name,
    )
    assert second.returncode == 0, second.stderr
    _assert_same_run(_straight_dir(straight), tmp_path / "resumed")  # the checkpoint's scalars kept too
    assert list(_state(tmp_path / "resumed" / "last.pt")["run"]["data"]["features"]) == [
        str(moved / tiny.features.name)  # where it last ran
    ]
    assert straight.stdout.replace(str(_straight_dir(straight)), str(tmp_path / "resumed")) == second.stdout

    before = _files(tmp_path / "resumed")
    again = run_img_train("--resume", tmp_path / "resumed", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "is already finished" in again.stderr and again.stdout == second.stdout
    assert _files(tmp_path / "resumed") == before  # nothing trained, nothing written


@pytest.mark.slow
def test_a_run_killed_with_sigkill_mid_run_resumes_to_the_straight_runs_weights(
    tiny: SyntheticDataset, straight: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    run = tmp_path / "killed"
    process = start_img_train(*train_args(tiny, run))
    deadline = time.monotonic() + 300
    while not (run / "last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)  # no handler, no cleanup: the machine or the scheduler pulled the plug
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"img-train ended before it was killed:\n{stderr[-3000:]}"
    assert not (run / "summary.txt").exists()  # mid-run
    killed_at = read_checkpoint(run / "last.pt").training["step"]  # readable, a good checkpoint
    assert killed_at < 4
    resumed = run_img_train("--resume", run, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at epoch {killed_at // 2 + 1}, step {killed_at}" in resumed.stderr
    _assert_same_run(_straight_dir(straight), run)


# Runs img-train's CLI in a process that SIGKILLs itself at a chosen moment of a checkpoint or metrics write
# (argv: the moment, which occurrence of it in this invocation, then img-train's arguments).
KILL_AT = """
import os, signal, sys
from pathlib import Path
import img_model.checkpoint, img_model.train.run_log, img_model.train.trainer
from img_model.cli.train import main

moment, occurrence = sys.argv[1], int(sys.argv[2])
del sys.argv[1:3]
seen = 0

def due():
    global seen
    seen += 1
    return seen == occurrence

def die():
    os.kill(os.getpid(), signal.SIGKILL)

trainer = img_model.train.trainer
replace, save, log_metrics = os.replace, trainer.save_checkpoint, img_model.train.run_log.RunLog.log_metrics

def replacing(source, target):  # the temporary file is written and fsync'd; the rename has not happened
    if moment == "before-rename" and Path(target).name == "last.pt" and due():
        die()
    replace(source, target)

def saving(checkpoint, path):
    save(checkpoint, path)
    if moment == "after-last-pt" and Path(path).name == "last.pt" and due():
        die()

def logging_metrics(self, entry):
    if moment == "mid-metrics-line" and due():
        with (self.run_dir / "metrics.jsonl").open("a") as out:
            out.write(img_model.train.run_log.json.dumps(entry)[:40])
        die()
    log_metrics(self, entry)
    if moment == "after-final-line" and entry["kind"] == "final":
        die()

os.replace = replacing
img_model.train.trainer.save_checkpoint = saving
img_model.train.run_log.RunLog.log_metrics = logging_metrics
main()
"""


def _killed_img_train(moment: str, occurrence: int, *args: str | Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", KILL_AT, moment, str(occurrence), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == -signal.SIGKILL, f"not killed at {moment} #{occurrence}:\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_kills_inside_checkpoint_and_metrics_writes_leave_a_run_that_resumes_exactly(
    tiny: SyntheticDataset, straight: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    """SIGKILL in the windows a kill can hit around an evaluation: last.pt's temporary file written but not
    renamed, right after last.pt (before or after its metrics line and scalars), halfway through a metrics.jsonl
    line, and right after the final line. Each time last.pt must load, the next --resume must succeed, and the run
    must end as the straight one: weights, training state, metrics.jsonl (no line lost, none twice, no torn line),
    scalars, summary."""
    run = tmp_path / "killed"
    _killed_img_train("before-rename", 2, *train_args(tiny, run))  # the 2nd last.pt (step 2) never lands
    assert read_checkpoint(run / "last.pt").training["step"] == 1
    _killed_img_train("after-last-pt", 1, "--resume", run, "--no-progress")  # last.pt at step 2 lands
    assert read_checkpoint(run / "last.pt").training["step"] == 2
    assert not list(run.glob(".*.tmp"))  # the temporary file of the kill before the rename is gone
    _killed_img_train("mid-metrics-line", 1, "--resume", run, "--no-progress")  # step 3's line torn
    _killed_img_train("after-final-line", 1, "--resume", run, "--no-progress")  # the run is finished: is it said?
    resumed = run_img_train("--resume", run, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "is already finished" in resumed.stderr and "selected on train-val" in resumed.stdout  # its summary
    _assert_same_run(_straight_dir(straight), run)
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in _straight_dir(straight).iterdir())


@pytest.mark.slow
def test_a_nan_loss_stops_with_its_step_and_queries_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    tiny = tiny_dataset(tmp_path / "data")  # its own: the store is damaged below
    run = tmp_path / "run"
    _stop_after_one_epoch(tiny, run)
    good = _state(run / "last.pt")
    # A train video's features become NaN (a new part supersedes its track): the next epoch meets it.
    from img_model.data.config import DataConfig
    from img_model.data.dataset import DataSources

    sources = DataSources(
        DataConfig(str(tiny.annotations), (str(tiny.features),), tiny.visual, tiny.audio, str(tiny.text))
    )
    video_id = next(v for v in sources.stores.video_ids() if v.startswith("train-both"))
    qids = [qid for qid, family in tiny.families.items() if family == "both"]
    tracks = {name: sources.stores.track(video_id, name) for name in sources.stores.feature_names(video_id)}
    broken = Track(np.full_like(tracks[tiny.visual].features, np.nan), tracks[tiny.visual].timestamps)
    writer = StoreWriter(tiny.features, {})
    writer.add_video(VideoRecord(video_id, sources.stores.metadata(video_id), {**tracks, tiny.visual: broken}))
    writer.close()
    result = run_img_train("--resume", run, "--no-progress")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("img-train: error: the model's outputs are not finite at step ")
    assert f"last good checkpoint: {run / 'last.pt'}" in message
    assert any(qid in message for qid in qids)
    after = _state(run / "last.pt")
    assert all(torch.equal(t, good["state_dict"][k]) for k, t in after["state_dict"].items())


@pytest.mark.slow
def test_a_run_folder_holds_config_checkpoints_metrics_and_tensorboard(tiny: SyntheticDataset, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_img_train(*train_args(tiny, run, "--select-on", "test", "--seed", "4", "--log-every", "2"))
    assert result.returncode == 0, result.stderr
    assert {"config.toml", "best.pt", "last.pt", "metrics.jsonl", "summary.txt", "train.log", "tensorboard"} <= {
        p.name for p in run.iterdir()
    }
    config = read_toml(run / "config.toml")
    assert config["train"]["select_on"] == "test" and config["train"]["seed"] == 4
    logged = (run / "train.log").read_text()  # with the lines logged before the run folder was created
    assert "train: 17 of 18 queries" in logged and "precision: fp32" in logged and "step 6: test fused" in logged
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["eval"] * 4 + ["final"] and {e["select_on"] for e in entries} == {"test"}
    assert {"fused", "visual", "audio"} == set(entries[0]["branches"])
    best = read_checkpoint(run / "best.pt")
    assert best.select_on == "test" and best.vocabulary is not None and len(best.vocabulary["sha256"]) == 64
    assert best.provenance["visual"]["recipe"]["generator"] == "img_model.data.synthetic"
    assert set(best.training) >= {"optimizer", "scheduler", "scaler", "rng", "epoch", "step"}
    assert "selected on the test split" in result.stdout
    scalars = _scalars(run)
    per_step = {
        "loss/total",
        "loss/location_fused",
        "loss/location_visual",
        "loss/location_audio",
        "loss/saliency_fused",
        "loss/saliency_visual",
        "loss/saliency_audio",
        "loss/distill_audio",
        "loss/distill_visual",
        "loss/importance",
        "terms/location",
        "train/lr",
        "train/grad_norm",
        "warmup/importance",
        "warmup/distill",
    }
    evaluations = {
        "test/fused/R1@0.7",
        "test/visual/mIoU",
        "test/audio/R5-noNMS@0.5",
        "test/fused/R5-NMS@0.5",
        "test/fused/mAP@[0.5:0.95]",
    }
    assert per_step | evaluations | {f"epoch_mean/{name}" for name in per_step} <= set(scalars)
    steps = {name: [step for step, _ in values] for name, values in scalars.items()}  # 3 steps per epoch
    assert {name: steps[name] for name in per_step} == {name: [2, 4, 6] for name in per_step}  # every 2nd step
    assert steps["epoch_mean/loss/total"] == [3, 6] and steps["test/fused/R1@0.7"] == [1, 3, 4, 6]
    assert scalars["epoch_mean/warmup/distill"][0][1] == 0.0  # ExpUp at epoch 0
    evaluated = run_img_eval(run / "best.pt", "--json", "--threads", "1")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["select_on"] == "test"


def test_an_existing_run_is_not_overwritten_and_resume_takes_no_recipe_flags(
    tiny: SyntheticDataset, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    result = CliRunner().invoke(img_train, train_args(tiny, run))
    assert result.exit_code == 2 and "already holds a run" in result.stderr and "--resume" in result.stderr
    result = CliRunner().invoke(img_train, ["--resume", str(run), "--epochs", "5"])
    assert result.exit_code == 2 and "drop --epochs" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(tiny: SyntheticDataset, tmp_path: Path) -> None:
    from img_model.data.dataset import DataSources
    from img_model.train.run_data import model_inputs, prepare_data
    from img_model.train.trainer import Trainer

    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        run = resolve(
            tiny.folder / "tiny.toml",
            {
                "data": {
                    "dataset": str(tiny.annotations),
                    "features": (str(tiny.features),),
                    "visual": tiny.visual,
                    "audio": tiny.audio,
                    "text": str(tiny.text),
                },
                "train": {"seed": seed, "epochs": 1, "evals_per_epoch": 1},
                "runtime": {"progress": False},
            },
        )
        sources = DataSources(run.data)
        run = replace(run, model=replace(run.model, **model_inputs(sources)))
        trainer = Trainer(run, prepare_data(run, sources), tmp_path / name)
        trainer.fit()
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}

    threads = torch.get_num_threads()  # the tiny config runs on 1 thread; the rest of the session keeps its own
    try:
        first, again, other = weights(0, "a"), weights(0, "b"), weights(1, "c")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fp16_without_a_gpu_is_refused_in_one_line() -> None:
    from extract.core.precision import Precision

    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        Precision.resolve("fp16", torch.device("cpu"))


@pytest.mark.slow
def test_resume_refuses_training_data_that_changed_in_one_line(tmp_path: Path) -> None:
    tiny = tiny_dataset(tmp_path / "data")  # its own: the annotations change below
    run = tmp_path / "run"
    _stop_after_one_epoch(tiny, run)
    recorded = _state(run / "last.pt")["training"]["data"]
    assert recorded["train_queries"] == 15 and recorded["select_split"] == "train-val"
    assert len(recorded["train_qids_sha256"]) == 64 and recorded["steps_per_epoch"] == 2
    lines = tiny.annotations.read_text().splitlines()
    dropped = next(n for n, line in enumerate(lines) if json.loads(line)["split"] == "train")
    tiny.annotations.write_text("".join(line + "\n" for n, line in enumerate(lines) if n != dropped))
    before = _files(run)
    result = run_img_train("--resume", run, "--no-progress")
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and result.stderr.count("error:") == 1
    assert message.startswith("img-train: error: the training data changed since the run started (")
    assert "train queries: 15 -> 14" in message and "train qids sha256: " in message
    assert {k: v for k, v in _files(run).items() if k != "train.log"} == {
        k: v for k, v in before.items() if k != "train.log"
    }


def _tiny_run(tiny: SyntheticDataset, **train: object) -> TrainingRunConfig:
    from img_model.data.dataset import DataSources
    from img_model.train.run_data import model_inputs

    data = {
        "dataset": str(tiny.annotations),
        "features": (str(tiny.features),),
        "visual": tiny.visual,
        "audio": tiny.audio,
        "text": str(tiny.text),
    }
    run = resolve(tiny.folder / "tiny.toml", {"data": data, "train": train, "runtime": {"progress": False}})
    return replace(run, model=replace(run.model, **model_inputs(DataSources(run.data))))


def _stop_after_one_epoch(tiny: SyntheticDataset, run_dir: Path) -> None:
    """The first epoch of the tiny run into run_dir, in this process (what `img-train --stop-after 1` trains; torch's
    thread count restored): a run for img-train --resume to meet something in."""
    from img_model.data.dataset import DataSources
    from img_model.train.run_data import prepare_data
    from img_model.train.trainer import Trainer

    threads = torch.get_num_threads()
    try:
        run = _tiny_run(tiny)
        result = Trainer(run, prepare_data(run, DataSources(run.data)), run_dir).fit(stop_after=1)
    finally:
        torch.set_num_threads(threads)
    assert not result.finished and read_checkpoint(run_dir / "last.pt").training["step"] == 2  # 2 steps an epoch


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("where", ["gradient", "weights", "loss"])
def test_non_finite_gradients_or_weights_stop_the_run_before_a_checkpoint_holds_them(
    tiny: SyntheticDataset, tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step of the run gets an infinite gradient (clipping makes it NaN weights), NaN weights, or a NaN
    loss from finite outputs: the run stops there, and last.pt and best.pt keep the step-2 weights (it used to
    finish with NaN weights in both)."""
    from img_model.data.dataset import DataSources
    from img_model.train import trainer as trainer_module
    from img_model.train.run_data import prepare_data
    from img_model.train.trainer import Trainer, TrainingDivergedError

    run = _tiny_run(tiny, evals_per_epoch=1)
    trainer = Trainer(run, prepare_data(run, DataSources(run.data)), tmp_path / "run")
    parameter = trainer.model.video_saliency.bias
    if where == "loss":
        computed = trainer_module.img_loss

        def nan_at_step_4(*args: object, **kwargs: object) -> object:
            loss = computed(*args, **kwargs)
            return loss._replace(total_loss=loss.total_loss * math.nan) if trainer.step == 3 else loss

        monkeypatch.setattr(trainer_module, "img_loss", nan_at_step_4)
        message = "loss is nan at step 4 (epoch 2)"
    elif where == "gradient":
        parameter.register_hook(lambda grad: torch.full_like(grad, math.inf) if trainer.step == 3 else grad)
        message = "the gradient norm is inf at step 4 (epoch 2)"
    else:
        poison = lambda *_: parameter.data.fill_(math.nan) if trainer.step == 3 else None  # noqa: E731
        trainer.optimizer.register_step_post_hook(poison)
        message = "the weights are not finite after step 4 (epoch 2): video_saliency.bias"
    with pytest.raises(TrainingDivergedError, match=re.escape(message)) as error:
        trainer.fit()
    assert f"last good checkpoint: {tmp_path / 'run' / 'last.pt'} (step 2)" in str(error.value)
    for name in ("last.pt", "best.pt"):
        state = _state(tmp_path / "run" / name)
        assert state["training"]["step"] == 2 and all(t.isfinite().all() for t in state["state_dict"].values())


OFFICIAL_ENCODING = TINY_CONFIG.replace('positional_encoding = "temporal"\n', "").replace(
    "max_pos_len = 24", "max_pos_len = 12"
)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("problem", ["features", "config", "batch", "precision", "split"])
def test_a_failed_invocation_is_one_line_and_leaves_no_run_folder(
    tiny: SyntheticDataset, tmp_path: Path, problem: str
) -> None:
    if problem == "precision" and torch.cuda.is_available():
        pytest.skip("checks the CPU-only refusal")
    out = tmp_path / "runs" / "new"
    args = train_args(tiny, out)
    expected = {
        "features": "no such feature store",
        "config": "unknown section [trian]",
        "batch": "batch_size 14 exceeds max_pos_len 12: the official batch-index position encoding",
        "precision": "fp16 needs a CUDA GPU",
        "split": "--select-on test: ",
    }[problem]
    if problem == "features":
        args[args.index("--features") + 1] = str(tmp_path / "missing.h5")
    elif problem == "config":
        (tmp_path / "bad.toml").write_text("[trian]\nepochs = 1\n")
        args[args.index("--config") + 1] = str(tmp_path / "bad.toml")
    elif problem == "batch":  # it used to fail at step 1 with an internal error
        (tmp_path / "official.toml").write_text(OFFICIAL_ENCODING)
        args[args.index("--config") + 1] = str(tmp_path / "official.toml")
        args += ["--batch-size", "14"]
    elif problem == "precision":
        args += ["--precision", "fp16"]
    else:
        lines = tiny.annotations.read_text().splitlines()
        (tmp_path / "no_test.jsonl").write_text("".join(x + "\n" for x in lines if '"split": "test"' not in x))
        args[args.index("--dataset") + 1] = str(tmp_path / "no_test.jsonl")
        args += ["--select-on", "test"]
    result = CliRunner().invoke(img_train, args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and result.stderr.count("img-train: error:") == 1
    assert not (tmp_path / "runs").exists()


def test_a_mistyped_command_is_named_with_the_closest_one() -> None:
    result = CliRunner().invoke(img_train, ["convert-oficial", "a.t7", "b.pt"])
    assert result.exit_code == 2
    assert result.stderr == "img-train: error: no command 'convert-oficial'; did you mean convert-official?\n"
    result = CliRunner().invoke(img_train, ["fit", "--dataset", "x"])
    assert result.exit_code == 2 and "no command 'fit'" in result.stderr and "train, convert-official" in result.stderr


@pytest.mark.usefixtures("one_thread")
def test_epoch_means_count_every_step_of_an_epoch_resumed_in_its_middle(tiny: SyntheticDataset, tmp_path: Path) -> None:
    from img_model.data.dataset import DataSources
    from img_model.train.run_data import prepare_data
    from img_model.train.trainer import Trainer

    run = _tiny_run(tiny, epochs=1)  # 2 steps, an evaluation (and last.pt) after each
    data = prepare_data(run, DataSources(run.data))
    Trainer(run, data, tmp_path / "straight").fit()
    interrupted = Trainer(run, data, tmp_path / "resumed")

    def stop(*_: object) -> None:
        if interrupted.step == 1:  # step 2's update: last.pt is at step 1, in the middle of the epoch
            raise KeyboardInterrupt

    interrupted.optimizer.register_step_post_hook(stop)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = Trainer(run, data, tmp_path / "resumed", resume=read_checkpoint(tmp_path / "resumed" / "last.pt"))
    assert resumed.epoch_step == 1 and resumed.epoch_totals["loss/total"][1] == 1
    resumed.fit()
    straight, again = _scalars(tmp_path / "straight"), _scalars(tmp_path / "resumed")
    assert again["epoch_mean/loss/total"] == straight["epoch_mean/loss/total"]
    assert again["epoch_mean/train/grad_norm"] == straight["epoch_mean/train/grad_norm"]
