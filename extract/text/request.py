"""What a user asks of `img-extract text`, checked into the text store it makes: `encode_text(TextRequest(...))`.

The command's flags map one to one onto TextRequest; the rules between them (one source of queries, one way of
encoding them, options that apply to one encoder only) live here, where pipelines and tests call them without
click. A checkpoint's vocabulary is read by the reader the caller passes (img_model's: the text package reads no
checkpoints)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extract.core.devices import resolve_device
from extract.core.download import sha256_file
from extract.core.errors import UsageError
from extract.store import FeatureStore, video_durations
from extract.text.pipeline import (
    TextQueries,
    TextSummary,
    parse_embed,
    run_encoder,
    run_glove,
    run_glove_with_vocabulary,
)
from extract.text.tokenize import DEFAULT_TOKENIZER
from extract.text.vocabulary_source import VocabularySource, load_vocabulary_source
from manifests.custom import read_custom
from manifests.registry import load_dataset


@dataclass(frozen=True)
class TextRequest:
    """img-extract text's options (their help says what each does)."""

    out: Path
    dataset: str | None = None
    annotations: Path | None = None
    embed: str | None = None
    vocabulary_from: Path | None = None
    store: Path | None = None
    data_dir: Path | None = None
    device: str = "auto"
    batch_size: int = 64
    max_length: int | None = None
    commit_every: int = 2048
    glove_cache: Path | None = None
    weights_dir: Path | None = None
    tokenizer: str | None = None
    resume: bool = True


def encode_text(request: TextRequest, from_checkpoint: Callable[[Path], VocabularySource]) -> TextSummary:
    """Write the text store of a request (one-line UsageErrors for options that do not go together);
    `from_checkpoint` reads the vocabulary of a checkpoint given as --vocabulary-from."""
    if (request.dataset is None) == (request.annotations is None):
        raise UsageError("give exactly one of --dataset NAME and --annotations FILE.jsonl")
    if (request.embed is None) == (request.vocabulary_from is None):
        raise UsageError(
            "give --embed glove:PATH|bert[:MODEL]|clip-text[:MODEL], or --vocabulary-from CHECKPOINT_OR_TEXT_STORE "
            "(not both)"
        )
    if request.vocabulary_from is not None:
        if request.max_length is not None:
            raise UsageError("--max-length applies to bert and clip-text; --vocabulary-from gives GloVe ids")
        source = load_vocabulary_source(request.vocabulary_from, from_checkpoint)
        return run_glove_with_vocabulary(text_queries(request), source, request.out, request.resume, request.tokenizer)
    assert request.embed is not None
    spec = parse_embed(request.embed)
    if request.max_length is not None and spec.kind == "glove":
        raise UsageError("--max-length applies to bert and clip-text; GloVe queries keep their first 128 words")
    if request.tokenizer is not None and spec.kind != "glove":
        raise UsageError(f"--tokenizer applies to glove; {spec.kind} uses its model's own tokenizer")
    queries = text_queries(request)
    if spec.kind == "glove":
        assert spec.target is not None
        tokenizer = request.tokenizer or DEFAULT_TOKENIZER
        return run_glove(queries, Path(spec.target), request.out, request.resume, request.glove_cache, tokenizer)
    from extract.text.bert import BertTextEncoder
    from extract.text.clip_text import ClipTextEncoder

    encoder_class = BertTextEncoder if spec.kind == "bert" else ClipTextEncoder
    device = resolve_device(request.device)
    encoder = encoder_class(spec.target, device, request.batch_size, request.max_length, request.weights_dir)
    return run_encoder(queries, encoder, request.out, request.resume, request.commit_every)


def text_queries(request: TextRequest) -> TextQueries:
    """The queries of a published dataset, or of the user's annotations (durations from --store when a line has
    none; ids that are not in the store are errors)."""
    if request.dataset is not None:
        loaded = load_dataset(request.dataset, request.data_dir)
        source = {"dataset": request.dataset, "files": loaded.files}
        return TextQueries(loaded.records, loaded.vocabulary_splits, source)
    assert request.annotations is not None
    durations = None
    if request.store is not None:
        with FeatureStore(request.store) as features:
            durations = video_durations(features)
    records, _ = read_custom(request.annotations, durations, known_videos=durations)
    return TextQueries(
        records, None, {"annotations": request.annotations.name, "sha256": sha256_file(request.annotations)}
    )
