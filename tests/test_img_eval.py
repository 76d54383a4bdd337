"""img-eval: deterministic tables and JSON, the predictions file, slot noise, dropped audio, refusals of inputs
made otherwise than the checkpoint's, and converted official checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from extract.store import StoreWriter, Track, VideoRecord
from img_model.checkpoint import read_checkpoint
from img_model.cli.train import main as img_train
from img_model.data.config import DataConfig
from img_model.data.dataset import DataSources
from img_model.data.synthetic import SyntheticDataset, write_audio_matters
from img_model.evaluate.evaluation import CONVERTED_NOTE
from img_model.evaluate.evaluator import BRANCHES, IMPORTANCE_EDGES, Evaluator
from img_model.network.metrics import retrieval_metrics
from img_model.train.config import from_dict
from manifests.records import QueryRecord
from tests.golden import golden_tensors
from tests.img_cli import TINY_SPEC, run_img_eval, train_tiny_checkpoint
from tests.test_img_convert import GOLDEN_WORDS, write_golden_text_store


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticDataset, Path]:
    """The tiny dataset and a checkpoint trained on it for one epoch (in this process, on 1 thread)."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("eval"))


def in_process_img_eval(*args: str) -> Result:
    """img-eval's click command run in this process (torch's thread count restored afterwards): a refusal that
    needs the checkpoint read, without another process start (the installed script runs above and below)."""
    from img_model.cli.evaluate import main as img_eval

    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(img_eval, list(args))
    finally:
        torch.set_num_threads(threads)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_evaluations_are_identical_and_predictions_hold_every_branch(
    trained: tuple[SyntheticDataset, Path], tmp_path: Path
) -> None:
    data, checkpoint = trained
    first = run_img_eval(checkpoint, "--json", "--threads", "1", "--predictions", tmp_path / "a.jsonl")
    second = run_img_eval(checkpoint, "--json", "--threads", "1", "--predictions", tmp_path / "b.jsonl")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    report, rows = json.loads(first.stdout), _lines(tmp_path / "a.jsonl")
    test_qids = [qid for qid in data.families if int(qid[4:]) >= 3 * TINY_SPEC.train_videos_per_family]
    assert [row["qid"] for row in rows] == test_qids and report["queries"] == len(rows)
    row = rows[0]
    assert set(row) == {
        "qid",
        "video_id",
        "query",
        "split",
        "duration",
        "num_steps",
        "ground_truth",
        "has_audio",
        "audio_importance",
        "branches",
    }
    sentences = {r["qid"]: r["query"] for r in map(json.loads, data.annotations.read_text().splitlines())}
    assert all(r["query"] == sentences[r["qid"]] and r["split"] == "test" for r in rows)
    assert set(row["branches"]) == set(BRANCHES) == set(report["branches"])
    fused = row["branches"]["fused"]
    kept = {"span", "steps", "score", "iou", "top", "top_nms", "saliency", "start_probability", "end_probability"}
    assert set(fused) == kept and 1 <= len(fused["top"]) <= 5
    assert set(row["branches"]["visual"]) == kept - {"start_probability", "end_probability"}  # the report's: fused
    assert 1 <= len(fused["top_nms"]) <= 10 and len(fused["saliency"]) == row["num_steps"]
    i, j = fused["steps"]
    for r in rows:  # the report's curves: P_start and P_end over the steps, whose product at the span is its score
        start, end = r["branches"]["fused"]["start_probability"], r["branches"]["fused"]["end_probability"]
        assert len(start) == len(end) == r["num_steps"]
        assert sum(start) == pytest.approx(1, abs=1e-5) and sum(end) == pytest.approx(1, abs=1e-5)
        a, b = r["branches"]["fused"]["steps"]
        assert start[a] * end[b] == pytest.approx(r["branches"]["fused"]["score"], rel=1e-5)
    assert fused["span"] == pytest.approx(
        [i * row["duration"] / row["num_steps"], (j + 1) * row["duration"] / row["num_steps"]]
    )
    for branch in BRANCHES:  # the report's numbers are those of the predictions file
        best = np.array([r["branches"][branch]["iou"] for r in rows])
        top = np.array([[t["iou"] for t in r["branches"][branch]["top"]] for r in rows])
        ranked = np.full((len(rows), 10), np.nan)
        for number, r in enumerate(rows):
            kept = [t["iou"] for t in r["branches"][branch]["top_nms"]]
            ranked[number, : len(kept)] = kept
        assert retrieval_metrics(best, top, ranked) == pytest.approx(report["branches"][branch])
    bins = report["audio_importance_bins"]
    assert [b["range"][1] for b in bins[:-1]] == list(IMPORTANCE_EDGES) and sum(b["queries"] for b in bins) == len(rows)
    assert report["slot_noise"] == "off" and report["select_on"] == "val"
    assert report["coverage"]["zero_audio"] == sum(not r["has_audio"] for r in rows) == 1


@pytest.mark.slow
def test_slot_noise_always_is_reproduced_by_its_seed_and_moves_the_fused_branch_only(
    trained: tuple[SyntheticDataset, Path],
) -> None:
    data, path = trained
    checkpoint = read_checkpoint(path)
    sources = DataSources(
        DataConfig(str(data.annotations), (str(data.features),), data.visual, data.audio, str(data.text))
    )
    dataset = sources.dataset(sources.splits()["test"], "test", "eval", checkpoint.config.max_pos_len)
    model = replace(checkpoint, config=replace(checkpoint.config, slot_noise="always")).model()

    def scores(seed: int) -> dict[str, list[float]]:
        predictions = Evaluator(torch.device("cpu"), seed=seed).predict(model, dataset)
        return {b: [p.branches[b].score for p in predictions] for b in BRANCHES}

    one, again, other = scores(1), scores(1), scores(2)
    assert one == again
    assert one["fused"] != other["fused"]
    assert one["visual"] == other["visual"] and one["audio"] == other["audio"]
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    scores(3)
    assert torch.equal(torch.rand(1), before)  # evaluation leaves the caller's generators alone


@pytest.mark.slow
def test_drop_audio_evaluates_with_zero_audio_tracks(trained: tuple[SyntheticDataset, Path], tmp_path: Path) -> None:
    _, checkpoint = trained
    result = run_img_eval(checkpoint, "--drop-audio", "--threads", "1", "--predictions", tmp_path / "p.jsonl")
    assert result.returncode == 0, result.stderr
    assert "audio dropped" in result.stdout and "branch    R1@0.3" in result.stdout
    assert not any(row["has_audio"] for row in _lines(tmp_path / "p.jsonl"))


@pytest.mark.slow
def test_features_or_text_made_otherwise_are_refused_in_one_line(
    trained: tuple[SyntheticDataset, Path], tmp_path: Path
) -> None:
    _, checkpoint = trained
    stronger = write_audio_matters(tmp_path / "stronger", replace(TINY_SPEC, marker_strength=3.0))
    result = run_img_eval(checkpoint, "--features", stronger.features)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "visual features 'synthetic-visual' were made differently" in result.stderr
    assert "marker_strength: 2.5 -> 3.0" in result.stderr
    other = write_audio_matters(tmp_path / "other", replace(TINY_SPEC, seed=1))
    result = in_process_img_eval(str(checkpoint), "--text", str(other.text))  # the same refusal path, in-process
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "was made differently from the checkpoint's text: vocabulary_sha256" in result.stderr


@pytest.mark.slow
def test_a_converted_official_checkpoint_evaluates_with_img_eval(tmp_path: Path) -> None:
    official = golden_tensors("img/small", 401)
    torch.save(official, tmp_path / "IMG_9.t7")
    (tmp_path / "configs.json").write_text(json.dumps({"event_num": 3, "slot_layers": 3, "num_heads": 4}))
    rng = np.random.default_rng(0)
    records, writer = (
        [],
        StoreWriter(tmp_path / "feats.h5", {"i3d": {"recipe": {"r": 1}}, "panns": {"recipe": {"r": 2}}}),
    )
    for number in range(6):
        steps, duration = 10 + number, 10.0 + number
        spans = np.stack([np.arange(steps), np.arange(steps) + 1], axis=1).astype(float)
        audio_spans = np.repeat(spans, 2, axis=0) / 2
        tracks = {
            "i3d": Track(rng.standard_normal((steps, 24)).astype(np.float32), spans),
            "panns": Track(rng.standard_normal((2 * steps, 20)).astype(np.float32), audio_spans),
        }
        writer.add_video(VideoRecord(f"v{number}", {"duration": duration, "has_audio": True}, tracks))
        words = " ".join(rng.choice(GOLDEN_WORDS, 3))
        records.append(QueryRecord(f"qid_{number}", f"v{number}", 1.0, 4.0 + number / 2, duration, words, "test"))
    writer.close()
    with (tmp_path / "queries.jsonl").open("w") as out:
        for r in records:
            line = {
                "qid": r.qid,
                "video_id": r.video_id,
                "start": r.start,
                "end": r.end,
                "query": r.sentence,
                "duration": r.duration,
                "split": "test",
            }
            out.write(json.dumps(line) + "\n")
    vectors = official["word_embeddingv.word_emb.glove_vec"].numpy()
    text = write_golden_text_store(tmp_path / "text.h5", vectors, records)
    converted = tmp_path / "img.pt"
    result = CliRunner().invoke(
        img_train, ["convert-official", str(tmp_path / "IMG_9.t7"), str(converted), "--text", str(text)]
    )
    assert result.exit_code == 0, result.output
    data_args = [
        "--dataset",
        tmp_path / "queries.jsonl",
        "--features",
        tmp_path / "feats.h5",
        "--visual",
        "i3d",
        "--audio",
        "panns",
        "--text",
        text,
    ]
    evaluated = run_img_eval(converted, *data_args, "--json", "--threads", "1")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["queries"] == 6 and report["checkpoint_source"] == "convert-official"
    assert any("no visual feature provenance" in note for note in report["notes"])
    assert "records no visual feature provenance" in evaluated.stderr
    assert report["select_on"] == "test" and CONVERTED_NOTE in report["notes"]  # the authors selected on test
    tables = in_process_img_eval(str(converted), *map(str, data_args), "--threads", "1", "--batch-size", "40")
    assert tables.exit_code == 2 and tables.stderr.count("error:") == 1  # it used to fail at the first batch
    assert "--batch-size 40 exceeds max_pos_len 32: the official batch-index position encoding" in tables.stderr


def test_help_says_what_img_eval_does_without_the_options() -> None:
    from img_model.cli.evaluate import main as img_eval

    text = " ".join(CliRunner().invoke(img_eval, ["--help"], terminal_width=200).output.split())
    assert "DataLoader worker processes (0)" in text and "(default: the checkpoint's run's, fp32 for converted" in text
    train = " ".join(CliRunner().invoke(img_train, ["train", "--help"], terminal_width=200).output.split())
    assert "DataLoader worker processes (2)" in train and "counted from the epoch it starts in" in train


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_an_fp16_run_evaluates_in_fp32_on_a_cpu_and_the_report_says_how(
    trained: tuple[SyntheticDataset, Path], tmp_path: Path
) -> None:
    """It used to fail ('--precision fp16 needs a CUDA GPU') unless --precision was given; --align that is not the
    checkpoint's was taken silently."""
    from img_model.cli.evaluate import main as img_eval

    _, checkpoint = trained
    stored = torch.load(checkpoint, weights_only=True)
    stored["run"]["runtime"]["precision"] = "fp16"
    torch.save(stored, tmp_path / "fp16.pt")
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(
            img_eval, [str(tmp_path / "fp16.pt"), "--json", "--threads", "1", "--align", "time"]
        )
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "the run used fp16, which does not run on cpu; running in fp32" in result.stderr
    assert "--align time: the checkpoint was trained with --align img" in result.stderr
    report = json.loads(result.stdout)
    assert (report["precision"], report["device"], report["align"]) == ("fp32", "cpu", "time")
    assert "--align time: the checkpoint was trained with --align img" in report["notes"]


def test_what_img_eval_refuses_is_one_line_saying_what_it_expects(
    trained: tuple[SyntheticDataset, Path], tmp_path: Path
) -> None:
    from img_model.cli.evaluate import main as img_eval

    data, checkpoint = trained
    result = CliRunner().invoke(img_eval, [str(checkpoint), "--split", "dev"])
    assert result.exit_code == 2
    assert result.stderr.endswith(f"{data.annotations} has the splits test, train, train-val\n")
    result = CliRunner().invoke(img_eval, [str(data.features)])  # a store passed by mistake
    assert result.exit_code == 2 and result.stderr == (
        f"img-eval: error: {data.features} is an HDF5 file (a feature or text store?), not a PyTorch file; expected an "
        "img_model checkpoint: RUN/best.pt or RUN/last.pt (img-train), or img-train convert-official's OUT.pt\n"
    )
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    result = CliRunner().invoke(img_eval, [str(tmp_path / "notes.txt")])
    assert (
        result.exit_code == 2
        and "notes.txt is not a readable PyTorch file (another kind of file, or a " in result.stderr
    )
    assert "weights_only" not in result.stderr and result.stderr.count("\n") == 1


def test_train_val_is_the_runs_selection_split_or_a_note_says_it_is_not(
    trained: tuple[SyntheticDataset, Path], tmp_path: Path
) -> None:
    from img_model.cli.evaluate import main as img_eval

    data, checkpoint = trained
    recorded = read_checkpoint(checkpoint).training["data"]
    threads = torch.get_num_threads()
    try:
        same = CliRunner().invoke(img_eval, [str(checkpoint), "--split", "train-val", "--json", "--threads", "1"])
        lines = data.annotations.read_text().splitlines()
        run = from_dict(read_checkpoint(checkpoint).run)
        sources = DataSources(run.data)
        held_out = {r.qid for r in sources.validation(sources.splits(), 0.1, 0)[2]}
        (tmp_path / "fewer.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["qid"] != min(held_out)))
        other = CliRunner().invoke(
            img_eval, [str(checkpoint), "--split", "train-val", "--json", "--dataset", str(tmp_path / "fewer.jsonl")]
        )
    finally:
        torch.set_num_threads(threads)
    assert same.exit_code == 0 and other.exit_code == 0, same.output + other.output
    report = json.loads(same.stdout)
    assert report["queries"] == recorded["select_queries"] and not report["notes"]
    note = "the train-val queries read now are not those the run selected on (other stores or annotations)"
    assert note in other.stderr and any(n.startswith(note) for n in json.loads(other.stdout)["notes"])


def test_an_error_is_one_line_whatever_its_message_holds(tmp_path: Path) -> None:
    """img-train and img-eval fail through extract/cli_common.fail under their own name (a name with a newline in
    it made two lines before)."""
    checkpoint = tmp_path / "best\nold.pt"
    checkpoint.write_bytes(b"junk")
    result = run_img_eval(checkpoint)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"img-eval: error: {tmp_path}/best old.pt is not a readable PyTorch file (unpack requires a buffer of 4 "
        "bytes); expected an img_model checkpoint: RUN/best.pt or RUN/last.pt (img-train), or img-train "
        "convert-official's OUT.pt"
    ]
