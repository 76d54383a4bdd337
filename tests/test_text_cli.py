"""`img-extract text`: GloVe, BERT and CLIP-text stores from the command, with provenance, resume, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from extract.cli.text import text_command
from extract.store import StoreWriter, Track, VideoRecord
from extract.text.store import TextStore
from tests.test_text_encoders import minilm_dir, save_tiny_clip_text
from tests.test_text_glove import shared_glove_6b
from tests.testdata import annotations_dir

DATA = annotations_dir()
LONG = " ".join(["door"] * 500)


def _text(*args: str | Path) -> Result:
    return CliRunner().invoke(text_command, [str(a) for a in args])


@pytest.fixture(scope="module")
def glove_6b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_glove_6b(tmp_path_factory)[0]


@pytest.fixture
def my_queries(tmp_path: Path) -> tuple[Path, Path]:
    """A feature store with two videos (their durations) and a user's JSONL queries about them."""
    writer = StoreWriter(tmp_path / "feats.h5", {})
    track = Track(np.zeros((2, 4), np.float32), np.array([[0, 1], [1, 2]], np.float64))
    for video_id, duration in (("kitchen", 20.0), ("garden", 42.0)):
        writer.add_video(VideoRecord(video_id, {"duration": duration}, {"clip": track}))
    writer.close()
    rows = [
        {"video_id": "kitchen", "start": 1, "end": 4, "query": "A person opens the fridge."},
        {"video_id": "garden", "start": 3, "end": 50, "query": "xqzv blorf"},  # only unknown words; end clipped
        {"video_id": "kitchen", "start": 0, "end": 20, "query": LONG, "qid": "long"},
    ]
    annotations = tmp_path / "my.jsonl"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return annotations, tmp_path / "feats.h5"


def test_glove_store_for_charades_sta_with_vocabulary_and_ids(glove_6b: Path, tmp_path: Path) -> None:
    out = tmp_path / "charades.glove.h5"
    args = ["--dataset", "charades-sta", "--data-dir", DATA, "--embed", f"glove:{glove_6b}", "--out", out]
    result = _text(*args, "--glove-cache", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "1303 distinct tokens in ['train', 'test'], 1244 in GloVe (1246 ids with <PAD>, <UNK>), 36 characters" in (
        result.output
    )
    with TextStore(out) as store:
        assert len(store) == 16128 and store.kind == "glove"
        recipe = store.provenance["recipe"]
        assert recipe["tokenizer"] == "nltk-3.7" and recipe["glove_file"] == "glove.6B.50d.txt"
        assert len(recipe["vocabulary_sha256"]) == 64 and recipe["glove_dim"] == 50 and recipe["words"] == 1246
        assert store.provenance["queries"]["dataset"] == "charades-sta"
        words, vectors, chars = store.vocabulary()
        assert (len(words), vectors.shape, len(chars)) == (1246, (1244, 50), 36)
        assert store.tokens("qid_0") == ["a", "person", "is", "putting", "a", "book", "on", "a", "shelf", "."]
        ids = store.word_ids("qid_0")
        assert [words[i] for i in ids] == store.tokens("qid_0")
        assert [[chars[c] for c in word] for word in store.char_ids("qid_0")][1] == list("person")
        assert store.records()[0].video_id == "AO8RW"
    again = _text(*args, "--glove-cache", tmp_path / "cache")
    assert again.exit_code == 0 and "0 queries embedded, 16128 already in the store" in again.output


def test_glove_for_my_queries_truncates_long_ones_and_maps_unknown_words(glove_6b, my_queries, tmp_path) -> None:
    annotations, feats = my_queries
    out = tmp_path / "my.glove.h5"
    result = _text(
        "--annotations",
        annotations,
        "--store",
        feats,
        "--embed",
        f"glove:{glove_6b}",
        "--out",
        out,
        "--glove-cache",
        tmp_path / "cache",
    )
    assert result.exit_code == 0, result.output
    assert "1 queries longer than 128 words keep their first 128" in result.output
    with TextStore(out) as store:
        assert store.word_ids("qid_1").tolist() == [1, 1]  # out of vocabulary: UNK
        assert len(store.word_ids("long")) == 128 and store.truncated("long") and not store.truncated("qid_0")
        assert [(r.duration, r.end) for r in store.records()] == [(20.0, 4.0), (42.0, 42.0), (20.0, 20.0)]
        assert store.provenance["recipe"]["vocabulary_splits"] == "all"


def test_tokenizer_option_is_recorded_and_a_store_keeps_one_tokenizer(glove_6b: Path, tmp_path: Path) -> None:
    annotations = tmp_path / "jumps.jsonl"
    row = {"video_id": "v", "start": 0, "end": 5, "duration": 9, "query": "He jumps at 6'2 feet.", "qid": "jump"}
    annotations.write_text(json.dumps(row) + "\n")
    args = ["--annotations", annotations, "--embed", f"glove:{glove_6b}", "--glove-cache", tmp_path / "cache"]
    assert _text(*args, "--out", tmp_path / "authors.h5").exit_code == 0
    current = _text(*args, "--out", tmp_path / "current.h5", "--tokenizer", "nltk-current")
    assert current.exit_code == 0, current.output
    with TextStore(tmp_path / "authors.h5") as authors, TextStore(tmp_path / "current.h5") as store:
        assert authors.tokens("jump") == ["he", "jumps", "at", "6", "'", "2", "feet", "."]
        assert store.tokens("jump") == ["he", "jumps", "at", "6'2", "feet", "."]
        assert authors.provenance["recipe"]["tokenizer"] == "nltk-3.7" and "nltk" not in authors.provenance["recipe"]
        assert store.provenance["recipe"]["tokenizer"] == "nltk-current" and store.provenance["recipe"]["nltk"]
    mixed = _text(*args, "--out", tmp_path / "authors.h5", "--tokenizer", "nltk-current")
    assert mixed.exit_code == 2 and "tokenizer: 'nltk-3.7' -> 'nltk-current'" in mixed.output


def test_bert_store_with_provenance_and_resume(my_queries, tmp_path: Path) -> None:
    annotations, feats = my_queries
    out = tmp_path / "my.bert.h5"
    args = ["--annotations", annotations, "--store", feats, "--embed", f"bert:{minilm_dir()}", "--out", out]
    result = _text(*args, "--max-length", "64", "--device", "cpu", "--commit-every", "2")
    assert result.exit_code == 0, result.output
    assert "3 queries embedded, 0 already in the store, 1 truncated" in result.output
    with TextStore(out) as store:
        assert store.kind == "bert" and store.provenance["recipe"]["max_length"] == 64
        assert store.provenance["recipe"]["weights_sha256"] and store.provenance["runtime"]["device"] == "cpu"
        assert store.features("qid_0").shape == (8, 384) and store.features("long").shape == (64, 384)
        features, mask = store.batch(["qid_0", "long"])
        assert features.shape == (2, 64, 384) and mask.sum(axis=1).tolist() == [8, 64]
    again = _text(*args, "--max-length", "64")
    assert again.exit_code == 0 and "0 queries embedded, 3 already in the store" in again.output
    changed = _text(*args, "--max-length", "32")
    assert changed.exit_code == 2 and "max_length: 64 -> 32" in changed.output


def test_clip_text_store_holds_tokens_and_pooled_embeddings(my_queries, tmp_path: Path) -> None:
    annotations, feats = my_queries
    model = save_tiny_clip_text(tmp_path / "tiny-clip")
    out = tmp_path / "my.clip.h5"
    result = _text("--annotations", annotations, "--store", feats, "--embed", f"clip-text:{model}", "--out", out)
    assert result.exit_code == 0, result.output
    with TextStore(out) as store:
        assert store.kind == "clip-text" and store.provenance["recipe"]["pooled"] == "text_embeds"
        assert store.features("long").shape == (77, 32) and store.truncated("long")
        assert store.pooled("qid_0").shape == (16,) and store.tokens("qid_0")[-1] == "<|endoftext|>"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--embed", "glove:/nonexistent/glove.840B.300d.txt"], "GloVe file /nonexistent/glove.840B.300d.txt does not"),
        (["--embed", "word2vec:x"], "--embed 'word2vec:x': use glove:PATH, bert[:MODEL] or clip-text[:MODEL]"),
        (["--embed", "glove"], "--embed glove needs the vectors file"),
        (["--embed", "bert", "--annotations", "x.jsonl"], "give exactly one of --dataset NAME and --annotations"),
        (["--embed", "glove:g.txt", "--max-length", "8"], "--max-length applies to bert and clip-text"),
        (["--embed", "bert", "--tokenizer", "nltk-current"], "--tokenizer applies to glove; bert uses its model's"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = _text("--dataset", "charades-sta", "--data-dir", DATA, "--out", tmp_path / "t.h5", *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("img-extract: error: ") and message in lines[-1], result.output


def test_an_empty_query_in_my_annotations_is_refused(tmp_path: Path) -> None:
    annotations = tmp_path / "my.jsonl"
    annotations.write_text('{"video_id": "a", "start": 0, "end": 1, "query": "", "duration": 5}\n')
    result = _text("--annotations", annotations, "--embed", "bert", "--out", tmp_path / "t.h5")
    assert result.exit_code == 2
    assert result.output.strip() == f"img-extract: error: {annotations} line 1: empty query"
