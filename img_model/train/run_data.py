"""The data of a training run: its splits (train, the selection split, test) opened from the DataSources, the model
sizes the data decides, and the fingerprint a checkpoint records so that --resume refuses data that changed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from extract.core.provenance import differences
from img_model.data.dataset import (
    OWN_VALIDATION_SPLIT,
    DataError,
    DataSources,
    MomentDataset,
    keep_video_fraction,
)
from img_model.train.config import TrainingRunConfig

log = logging.getLogger(f"img_vmr.{__name__}")


@dataclass
class RunData:
    """The datasets of a run: training, selection (val or test) and the test split for the final report."""

    sources: DataSources
    train: MomentDataset
    select: MomentDataset
    test: MomentDataset | None  # None when selecting on test (it is `select`) or when there is no test split


def model_inputs(sources: DataSources) -> dict[str, Any]:
    """The IMGConfig fields the data decides: feature sizes and the query embedding's vocabulary sizes."""
    fields: dict[str, Any] = {"video_feature_dim": sources.video_dim, "audio_feature_dim": sources.audio_dim}
    texts = sources.texts
    if texts.precomputed:
        return fields | {"query_features": "precomputed", "text_feature_dim": texts.feature_dim}
    assert texts.vocabulary is not None
    vectors = texts.vocabulary.vectors
    return fields | {
        "query_features": "glove_char",
        "glove_words": vectors.shape[0],
        "word_dim": vectors.shape[1],
        "char_vocab_size": len(texts.vocabulary.chars),
    }


def prepare_data(run: TrainingRunConfig, sources: DataSources) -> RunData:
    """Splits: train, the selection split and test. Selecting on validation data (the default), the selection
    split is a custom JSONL's own `val` split, else `train-val`: a share of the training videos that have features
    and text, seeded by val_seed (not the training seed: every seed selects on the same videos), removed from train.
    With select_on = test, train is the whole train split. train_fraction then keeps a seeded share of the
    training videos (seeded by val_seed). A refit run (refit_steps > 0) trains on the selecting run's training
    videos and its validation ones together, selects nothing, and reports on test. Training queries of videos
    without audio follow data.missing_audio."""
    splits = sources.splits()
    if "train" not in splits:
        raise DataError(f"{run.data.dataset} has no train split (it has: {', '.join(sorted(splits))})")
    max_pos_len, seed, fraction = run.model.max_pos_len, run.train.seed, run.train.train_fraction
    test_records = splits.get("test")
    if (run.train.select_on == "test" or run.train.refit_steps) and not test_records:
        why = "a refit run reports on test" if run.train.refit_steps else "--select-on test"
        raise DataError(f"{why}: {run.data.dataset} has no test split")
    if run.train.select_on == "test":
        train_records = keep_video_fraction(splits["train"], fraction, run.train.val_seed)
        train = sources.dataset(train_records, "train", "train", max_pos_len, seed)
        return RunData(sources, train, sources.dataset(test_records, "test", "eval", max_pos_len), None)
    name, train_records, val_records = sources.validation(splits, run.train.val_fraction, run.train.val_seed)
    if name == OWN_VALIDATION_SPLIT:
        log.info("selecting on the dataset's own %s split; --val-fraction and --val-seed do not apply", name)
    train_records = keep_video_fraction(train_records, fraction, run.train.val_seed)
    if fraction < 1.0:
        log.info("training on %.0f%% of the training videos (train_fraction %g)", 100 * fraction, fraction)
    if run.train.refit_steps:  # the selecting run's training videos and the ones it selected on
        train = sources.dataset(train_records + val_records, "train", "train", max_pos_len, seed)
        return RunData(sources, train, sources.dataset(test_records, "test", "eval", max_pos_len), None)
    train = sources.dataset(train_records, "train", "train", max_pos_len, seed)
    select = sources.dataset(val_records, name, "eval", max_pos_len)
    test = sources.dataset(test_records, "test", "eval", max_pos_len) if test_records else None
    return RunData(sources, train, select, test)


def data_fingerprint(data: RunData, steps_per_epoch: int) -> dict[str, Any]:
    """What a checkpoint records about the data it trained on; --resume refuses data that differs."""
    return {
        "train_queries": len(data.train),
        "train_qids_sha256": data.train.qids_sha256(),
        "select_split": data.select.split,
        "select_queries": len(data.select),
        "select_qids_sha256": data.select.qids_sha256(),
        "steps_per_epoch": steps_per_epoch,
    }


def fingerprint_changes(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """The fields of two data fingerprints that differ, in one line ('' when none do); hashes shortened."""

    def shown(fingerprint: dict[str, Any]) -> dict[str, Any]:
        return {
            key.replace("_", " "): value[:12] if key.endswith("sha256") else value for key, value in fingerprint.items()
        }

    return differences(shown(recorded), shown(current), limit=len(current))
