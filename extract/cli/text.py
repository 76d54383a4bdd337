"""`img-extract text`: the text inputs IMG needs for a dataset's or a user's queries, in an HDF5 text store."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from extract.cli.options import resume_option
from extract.core.console import EXIT_INTERRUPTED, fail, setup_logging
from extract.core.errors import ImgVmrError, StoreWriteError
from extract.core.options import weights_dir_option
from extract.text.tokenize import TOKENIZERS
from manifests.registry import DATASETS

log = logging.getLogger(f"img_vmr.{__name__}")


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
    from extract.text.request import TextRequest, encode_text
    from img_model.checkpoint import checkpoint_vocabulary

    setup_logging("img-extract", flags.pop("verbose"))
    try:
        summary = encode_text(TextRequest(**flags), checkpoint_vocabulary)
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
