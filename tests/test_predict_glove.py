"""img-predict's open vocabulary: a GloVe checkpoint (the real run's, trained on real GloVe 6B-50d rows) reads the
words its training queries never had with their exact rows of the GloVe file (--glove, or the file recorded at
training when its index is in the GloVe index cache), and still lists the words in neither."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core.errors import UsageError
from img_model.checkpoint import Checkpoint, read_checkpoint
from img_model.network.config import IMGConfig
from img_model.network.layers import WordVectors
from img_model.predict.predictor import Predictor, PredictorOptions, VideoAnswers
from img_model.predict.queries import QueryError, glove_extension
from tests.img_cli import run_img_predict
from tests.real_run import RealRun

pytestmark = pytest.mark.slow  # the session's real_run

NEW_WORDS = ("plays", "guitar")  # in GloVe 6B (its 20,000 most frequent words), in no training query
QUERY = "a dog plays the guitar"


def glove_file(real_run: RealRun) -> Path:
    return real_run.folder / "glove-6b" / "glove.6B.50d.txt"


def file_rows(path: Path, words: tuple[str, ...]) -> np.ndarray:
    """The rows of these words as the GloVe text file writes them, parsed here on their own."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        word, _, values = line.partition(" ")
        if word in words:
            rows[word] = np.array(values.split(" "), dtype=np.float64).astype(np.float32)
    return np.stack([rows[word] for word in words])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("glove-predict-cache")


def predictor(real_run: RealRun, cache: Path, **options: object) -> Predictor:
    return Predictor.from_checkpoint(
        real_run.checkpoint,
        PredictorOptions(
            device="cpu",
            cache_dir=cache,
            weights_dir=real_run.weights_dir,
            clip_model=str(real_run.clip_model),
            threads=1,
            glove_cache=cache / "no-glove-index",  # no index cached: only --glove extends
            **options,  # type: ignore[arg-type]
        ),
    )


def test_words_unseen_in_training_read_their_exact_glove_rows_and_change_the_answer(
    real_run: RealRun, cache: Path
) -> None:
    """The rows the model embeds for the new words are the GloVe file's, bit for bit, and the answer is not the
    one the same query gets with them read as <UNK>."""
    vocabulary = read_checkpoint(real_run.checkpoint).vocabulary
    assert vocabulary is not None and not set(NEW_WORDS) & set(vocabulary["words"])  # unseen in training
    video = real_run.videos / "clip4.mp4"
    closed = predictor(real_run, cache).predict(video, QUERY).answers[0]
    assert closed.unknown_words == NEW_WORDS and closed.glove_words == ()

    opened = predictor(real_run, cache, glove=glove_file(real_run))
    embedded: list[torch.Tensor] = []
    hooks = [
        module.register_forward_hook(lambda module, args, output: embedded.append(output[0].clone()))
        for module in opened.model.modules()
        if isinstance(module, WordVectors)
    ]
    answers = opened.predict(video, QUERY)
    for hook in hooks:
        hook.remove()
    answer = answers.answers[0]
    assert answer.glove_words == NEW_WORDS and answer.unknown_words == ()
    assert (answers.glove, answers.added_words) == ("glove.6B.50d.txt", NEW_WORDS)
    positions = [QUERY.split().index(word) for word in NEW_WORDS]
    assert len(embedded) == 2  # the video branch's and the audio branch's query embedding
    for rows in embedded:
        np.testing.assert_array_equal(rows[positions].numpy(), file_rows(glove_file(real_run), NEW_WORDS))
    assert answer.start_probabilities != closed.start_probabilities
    assert answer.end_probabilities != closed.end_probabilities
    assert answer.score != closed.score


def test_the_glove_file_recorded_at_training_extends_the_vocabulary_from_its_index(
    real_run: RealRun, cache: Path
) -> None:
    """Without --glove, the file the checkpoint records (name, size, sha256) is found in the GloVe index cache
    img-extract text built; a word in neither the vocabulary nor the file is still listed."""
    result = run_img_predict(
        *real_run.predict_options(cache),
        "--glove-cache",
        real_run.folder / "glove-index",
        real_run.videos / "clip4.mp4",
        QUERY,
        "a dog xqzzyv",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["vocabulary"] == {"glove": "glove.6B.50d.txt", "added_words": list(NEW_WORDS)}
    first, second = data["answers"]
    assert (first["glove_words"], first["unknown_words"]) == (list(NEW_WORDS), [])
    assert (second["glove_words"], second["unknown_words"]) == ([], ["xqzzyv"])
    assert "the GloVe file recorded at training" in result.stderr
    assert f"'{QUERY}': plays, guitar read from glove.6B.50d.txt" in result.stderr
    assert "'a dog xqzzyv': xqzzyv not in the checkpoint's vocabulary nor in glove.6B.50d.txt" in result.stderr
    assert str(real_run.folder) not in json.dumps(data["vocabulary"])
    assert VideoAnswers.from_json(data).as_json() == data


def test_a_glove_file_the_model_was_not_trained_with_is_refused(real_run: RealRun, tmp_path: Path) -> None:
    checkpoint = read_checkpoint(real_run.checkpoint)
    lines = glove_file(real_run).read_text(encoding="utf-8").splitlines()
    word, _, values = lines[0].partition(" ")
    other = tmp_path / "other.txt"
    changed = " ".join(str(float(value) + 0.5) for value in values.split(" "))
    other.write_text("\n".join([f"{word} {changed}", *lines[1:]]) + "\n", encoding="utf-8")
    assert word in checkpoint.vocabulary["words"]  # type: ignore[index]
    with pytest.raises(UsageError, match=r"--glove other.txt: its vectors of the checkpoint's words are not the ones"):
        glove_extension(checkpoint, other, tmp_path / "index")
    same = tmp_path / "copy" / "glove.6B.50d.txt"  # another file (one word more) with the same vectors: accepted
    same.parent.mkdir()
    same.write_text("\n".join([*lines, "zzqextra " + " ".join(["0.0"] * 50)]) + "\n", encoding="utf-8")
    extension = glove_extension(checkpoint, same, tmp_path / "index")
    assert extension is not None and extension.name == "glove.6B.50d.txt"
    precomputed = Checkpoint(config=IMGConfig(query_features="precomputed", text_feature_dim=8), state_dict={})
    with pytest.raises(UsageError, match="holds no GloVe words to extend"):
        glove_extension(precomputed, same, tmp_path / "index")
    assert glove_extension(checkpoint, None, tmp_path / "empty") is None  # no index of the recorded file there


def test_a_query_of_words_in_neither_is_still_refused(real_run: RealRun, cache: Path) -> None:
    opened = predictor(real_run, cache, glove=glove_file(real_run))
    with pytest.raises(QueryError, match=r"nor in glove\.6B\.50d\.txt: every word would read as the same <UNK>"):
        opened.read_queries(["xqzzyv zzqxv"])
