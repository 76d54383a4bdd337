"""`img-extract manifest` (a dataset's videos found on disk) and `img-extract text` (query text features).

Registered on the main group in extract/cli/run.py; the helpers it shares with the other commands (logging setup,
one-line errors, exit codes, common options) come from extract/core/console.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from extract.cli.options import resume_option
from extract.core.console import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, fail, setup_logging
from extract.core.errors import ImgVmrError, StoreWriteError
from extract.core.options import weights_dir_option
from extract.text.tokenize import DEFAULT_TOKENIZER, TOKENIZERS
from manifests.registry import DATASETS

log = logging.getLogger("img_vmr.extract")

EXIT_MISSING = EXIT_FAILED  # some videos of the dataset are not on disk


def _dataset_table() -> str:
    return "\n".join(f"  {name:<13} {manifest.description}" for name, manifest in DATASETS.items())


@click.command(
    "manifest",
    epilog="\b\nDatasets:\n" + _dataset_table() + "\n\n\b\n"
    "Exit status: 0 every video found, 1 some missing (the manifest lists the others), 2 usage error.",
)
@click.argument("name")
@click.option(
    "--videos",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder holding the dataset's videos (searched recursively; file name without extension = video id).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Manifest to write.")
@click.option("--split", "splits", multiple=True, help="Only the videos of these splits (repeatable; default all).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with the annotation files (default $IMG_DATA_DIR or ~/.cache/img-vmr/annotations; fetched "
    "there on first use).",
)
def manifest_command(name: str, videos: Path, out: Path, splits: tuple[str, ...], data_dir: Path | None) -> None:
    """Write the video manifest of dataset NAME (or of a custom annotations .jsonl) for `img-extract`.

    \b
    Lists the dataset's videos found under --videos as JSONL {"video_id", "path"}; the ids without a file
    are written to OUT with the suffix .missing.txt.

    \b
    Examples:
      img-extract manifest charades-sta --videos Charades_v1_480/ --out charades.jsonl
      img-extract charades.jsonl --out feats.h5 --features i3d-charades-vslnet,panns
    """
    from manifests.video_manifest import match_video_files, write_manifest, write_missing

    setup_logging("img-extract")
    try:
        video_ids = _video_ids(name, splits, data_dir)
        found, missing = match_video_files(video_ids, videos)
        write_manifest(found, out)
    except ImgVmrError as error:
        fail(str(error))
    log.info("%s: %d of %d videos found under %s", out, len(found), len(found) + len(missing), videos)
    if missing:
        listing = out.with_suffix(".missing.txt")
        write_missing(missing, listing)
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        log.warning("%d videos missing on disk (%s); all listed in %s", len(missing), shown, listing)
    sys.exit(EXIT_MISSING if missing else EXIT_OK)


def _video_ids(name: str, splits: tuple[str, ...], data_dir: Path | None) -> list[str]:
    from extract.core.errors import UsageError
    from manifests.custom import read_rows
    from manifests.registry import load_dataset

    if name in DATASETS:
        records = [(r.split, r.video_id) for r in load_dataset(name, data_dir).records]
    elif name.endswith(".jsonl") and Path(name).is_file():
        records = [(row.split, row.video_id) for row in read_rows(Path(name))]
    else:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or a custom .jsonl file)")
    known = {split for split, _ in records}
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise UsageError(f"--split {unknown[0]}: {name} has the splits {', '.join(sorted(known))}")
    return [video_id for split, video_id in records if not splits or split in splits]


@click.command("text")
@click.option("--dataset", type=click.Choice(list(DATASETS)), default=None, help="A published dataset by name.")
@click.option(
    "--annotations",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Your own queries: JSONL lines {video_id, start, end, query[, duration, qid, split]}.",
)
@click.option(
    "--embed",
    default=None,
    help="glove:PATH, bert[:MODEL] or clip-text[:MODEL] (HF id or folder); or give --vocabulary-from instead.",
)
@click.option(
    "--vocabulary-from",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Encode the queries with the GloVe vocabulary of this checkpoint (RUN/best.pt) or text store, so that "
    "img-eval accepts them for that model; words it lacks become <UNK>. Replaces --embed.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Text store to write.")
@click.option(
    "--store",
    type=click.Path(path_type=Path),
    default=None,
    help="Feature store of the videos: durations for --annotations lines without one; other video ids are errors.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with the annotation files (default $IMG_DATA_DIR or ~/.cache/img-vmr/annotations).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (bert, clip-text).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Queries per forward.")
@click.option(
    "--max-length", type=click.IntRange(min=2), default=None, help="Tokens per query (default: the model's maximum)."
)
@click.option(
    "--commit-every",
    default=2048,
    show_default=True,
    type=click.IntRange(min=1),
    help="Queries per committed part: a crash loses at most this many.",
)
@click.option(
    "--glove-cache",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the GloVe index is built (default $IMG_WEIGHTS_DIR/glove-index or ~/.cache/img-vmr/glove-index).",
)
@weights_dir_option()
@click.option(
    "--tokenizer",
    type=click.Choice(TOKENIZERS),
    default=None,
    help="GloVe word splitting: nltk-3.7 (default; the authors' NLTK, so ids match official checkpoints) or "
    "nltk-current (the installed NLTK; 20 ActivityNet queries split differently).",
)
@resume_option("queries", "recomputes all")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def text_command(**flags: Any) -> None:
    """Turn queries into the text inputs IMG needs, stored in the HDF5 text store OUT with provenance.

    \b
    glove:PATH      IMG's word and character vocabularies (train + test words found in GloVe, PAD = 0,
                    UNK = 1), the vector matrix and every query's word and character ids. PATH is a file in
                    the glove.840B.300d.txt format; its first read builds an index (minutes), later runs
                    load it in seconds.
    bert[:MODEL]    per-token last hidden states [L, D] (default bert-base-uncased).
    clip-text[:MODEL]  per-token features [L, 512] and the pooled projected embedding
                    (default openai/clip-vit-base-patch32).

    \b
    --vocabulary-from SOURCE
                    word and character ids by the vocabulary of a checkpoint or GloVe text store (vectors
                    included): new queries for an existing model, which img-eval accepts.

    \b
    Examples:
      img-extract text --dataset charades-sta --embed glove:glove.840B.300d.txt --out charades.glove.h5
      img-extract text --annotations my.jsonl --store feats.h5 --embed bert --out my.bert.h5 --device cuda
      img-extract text --annotations my.jsonl --store feats.h5 --vocabulary-from runs/charades/best.pt \\
                       --out my.glove.h5
    """
    setup_logging("img-extract", flags["verbose"])
    try:
        summary = _text(**flags)
    except StoreWriteError as error:
        log.debug("error", exc_info=True)
        fail(f"{error}; committed queries are kept: make room, then re-run the same command to resume")
    except ImgVmrError as error:
        log.debug("error", exc_info=True)
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; committed queries are kept, re-run the same command to resume", EXIT_INTERRUPTED)
    for line in summary.lines():
        log.info("%s", line)


def _text(
    dataset: str | None,
    annotations: Path | None,
    embed: str | None,
    vocabulary_from: Path | None,
    out: Path,
    store: Path | None,
    data_dir: Path | None,
    device: str,
    batch_size: int,
    max_length: int | None,
    commit_every: int,
    glove_cache: Path | None,
    weights_dir: Path | None,
    tokenizer: str | None,
    resume: bool,
    verbose: bool,
) -> Any:
    from extract.core.devices import resolve_device
    from extract.core.errors import UsageError
    from extract.text.pipeline import parse_embed, run_encoder, run_glove, run_glove_with_vocabulary
    from extract.text.vocabulary_source import load_vocabulary_source
    from img_model.checkpoint import checkpoint_vocabulary

    if (dataset is None) == (annotations is None):
        raise UsageError("give exactly one of --dataset NAME and --annotations FILE.jsonl")
    if (embed is None) == (vocabulary_from is None):
        raise UsageError(
            "give --embed glove:PATH|bert[:MODEL]|clip-text[:MODEL], or --vocabulary-from CHECKPOINT_OR_TEXT_STORE "
            "(not both)"
        )
    if vocabulary_from is not None:
        if max_length is not None:
            raise UsageError("--max-length applies to bert and clip-text; --vocabulary-from gives GloVe ids")
        source = load_vocabulary_source(vocabulary_from, checkpoint_vocabulary)
        queries = _queries(dataset, annotations, store, data_dir)
        return run_glove_with_vocabulary(queries, source, out, resume, tokenizer)
    assert embed is not None
    spec = parse_embed(embed)
    if max_length is not None and spec.kind == "glove":
        raise UsageError("--max-length applies to bert and clip-text; GloVe queries keep their first 128 words")
    if tokenizer is not None and spec.kind != "glove":
        raise UsageError(f"--tokenizer applies to glove; {spec.kind} uses its model's own tokenizer")
    queries = _queries(dataset, annotations, store, data_dir)
    if spec.kind == "glove":
        assert spec.target is not None
        return run_glove(queries, Path(spec.target), out, resume, glove_cache, tokenizer or DEFAULT_TOKENIZER)
    from extract.text.bert import BertTextEncoder
    from extract.text.clip_text import ClipTextEncoder

    encoder_class = BertTextEncoder if spec.kind == "bert" else ClipTextEncoder
    encoder = encoder_class(spec.target, resolve_device(device), batch_size, max_length, weights_dir)
    return run_encoder(queries, encoder, out, resume, commit_every)


def _queries(dataset: str | None, annotations: Path | None, store: Path | None, data_dir: Path | None) -> Any:
    from extract.core.download import sha256_file
    from extract.store import FeatureStore, video_durations
    from extract.text.pipeline import TextQueries
    from manifests.custom import read_custom
    from manifests.registry import load_dataset

    if dataset is not None:
        loaded = load_dataset(dataset, data_dir)
        source = {"dataset": dataset, "files": loaded.files}
        return TextQueries(loaded.records, loaded.vocabulary_splits, source)
    assert annotations is not None
    durations = None
    if store is not None:
        with FeatureStore(store) as features:
            durations = video_durations(features)
    records, _ = read_custom(annotations, durations, known_videos=durations)
    return TextQueries(records, None, {"annotations": annotations.name, "sha256": sha256_file(annotations)})
