"""`img-extract text --vocabulary-from`: new queries encoded with an existing model's (or text store's) GloVe
vocabulary, recorded in provenance, and accepted by img-eval for that model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from extract.cli.text import text_command
from extract.text.store import TextStore
from extract.text.tokenize import tokenize
from img_model.data.synthetic import SyntheticDataset
from tests.conftest import run_cli
from tests.img_cli import run_img_eval, tiny_dataset, train_tiny_checkpoint
from tests.test_text_glove import shared_glove_6b

# Sentences the synthetic vocabulary has never seen, mixed with words it has.
NEW_SENTENCES = ("a dog knocks on the sofa", "the zebra juggles a phone", "someone shouts twice loudly")


def _text(*args: str | Path) -> Result:
    """img-extract text in this process."""
    return CliRunner().invoke(text_command, [str(a) for a in args])


def write_new_queries(data: SyntheticDataset, path: Path) -> list[dict]:
    """Queries of our own about the synthetic test videos (another query set than the one trained on)."""
    rows = []
    for line in data.annotations.read_text().splitlines():
        row = json.loads(line)
        if row["split"] == "test":
            sentence = NEW_SENTENCES[len(rows) % len(NEW_SENTENCES)]
            rows.append({**row, "qid": f"new_{len(rows)}", "query": sentence})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


@pytest.fixture(scope="module")
def glove_6b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_glove_6b(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticDataset, Path]:
    """The tiny synthetic dataset and a checkpoint trained on it for one epoch (in this process)."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("vocabulary-from"))


def test_queries_get_the_ids_of_the_source_text_store_and_provenance_says_so(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    queries = tmp_path / "new.jsonl"
    rows = write_new_queries(data, queries)
    out = tmp_path / "new.h5"
    result = _text("--annotations", queries, "--store", data.features, "--vocabulary-from", data.text, "--out", out)
    assert result.exit_code == 0, result.output
    assert "words of these queries are not in it (<UNK>)" in result.stderr
    with TextStore(data.text) as source, TextStore(out) as store:
        words, vectors, chars = source.vocabulary()
        new_words, new_vectors, new_chars = store.vocabulary()
        assert (new_words, new_chars) == (words, chars)
        np.testing.assert_array_equal(new_vectors, vectors)
        assert store.provenance["recipe"] == source.provenance["recipe"]
        origin = store.provenance["vocabulary_from"]
        assert origin["path"] == str(data.text.resolve()) and origin["kind"] == "text store"
        index = {word: i for i, word in enumerate(words)}
        for row in rows:
            expected = [index.get(token, 1) for token in tokenize(row["query"])]
            assert store.word_ids(row["qid"]).tolist() == expected
        assert 1 in store.word_ids("new_1").tolist()  # "zebra" and "juggles" are not in the vocabulary


def test_vocabulary_from_is_one_line_when_misused(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    queries = tmp_path / "new.jsonl"
    write_new_queries(data, queries)
    common = ["--annotations", queries, "--store", data.features, "--out", tmp_path / "new.h5"]
    both = _text(*common, "--vocabulary-from", data.text, "--embed", "bert")
    assert both.exit_code == 2 and "not both" in both.stderr and both.stderr.count("\n") == 1
    not_a_source = _text(*common, "--vocabulary-from", data.annotations)
    assert not_a_source.exit_code == 2 and not_a_source.stderr.count("\n") == 1
    assert "neither a text store nor a readable checkpoint" in not_a_source.stderr
    tokenizer = _text(*common, "--vocabulary-from", data.text, "--tokenizer", "nltk-current")
    assert tokenizer.exit_code == 2 and "was made with nltk-3.7" in tokenizer.stderr


@pytest.mark.slow
def test_img_eval_accepts_new_queries_encoded_with_the_checkpoints_vocabulary(
    trained: tuple[SyntheticDataset, Path], glove_6b: Path, tmp_path: Path
) -> None:
    data, checkpoint = trained
    queries = tmp_path / "new.jsonl"
    rows = write_new_queries(data, queries)
    data_args = ["--dataset", queries, "--features", data.features, "--visual", data.visual, "--audio", data.audio]

    # A vocabulary of their own (what `--embed glove:...` builds from the new queries) is refused ...
    own = tmp_path / "own.h5"
    made = run_cli(
        "text",
        "--annotations",
        queries,
        "--store",
        data.features,
        "--embed",
        f"glove:{glove_6b}",
        "--glove-cache",
        tmp_path / "cache",
        "--out",
        own,
    )
    assert made.returncode == 0, made.stderr
    refused = run_img_eval(checkpoint, *data_args, "--text", own, "--threads", "1")
    assert refused.returncode == 2 and "made differently from the checkpoint's text" in refused.stderr

    # ... the checkpoint's vocabulary is accepted, and the model reads every query.
    encoded = tmp_path / "new.h5"
    made = run_cli(
        "text", "--annotations", queries, "--store", data.features, "--vocabulary-from", checkpoint, "--out", encoded
    )
    assert made.returncode == 0, made.stderr
    with TextStore(encoded) as store:
        assert store.provenance["vocabulary_from"]["kind"] == "checkpoint"
        assert store.provenance["vocabulary_from"]["path"] == str(checkpoint.resolve())
    evaluated = run_img_eval(checkpoint, *data_args, "--text", encoded, "--threads", "1", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["queries"] == len(rows) and report["coverage"]["no_text"] == 0
