"""img_model checkpoints: one file holds the model and everything needed to use it, check it, or continue it.

    format, format_version   "img-vmr-checkpoint", 1
    source                   "img-train" or "convert-official"
    config                   IMGConfig fields: the model's shape (incl. event_num, slot_iterations,
                             fusion_gru_layers) and its input sizes
    state_dict               the weights under our names
    weights_sha256           sha256 of the weights (`weights_sha256`), checked on every load: a changed byte (a bad
                             disk or copy; torch.load does not check the zip's CRCs) is refused, naming the file;
                             files written before it existed load with a note
    vocabulary               {"words", "chars", "sha256"} for GloVe models (word / char ids index these), else None
    provenance               {"visual": {name, dim, recipe}, "audio": {...}, "text": {kind, recipe}}: what the
                             inputs were made with; img-eval refuses inputs made otherwise (entries may be
                             missing for converted checkpoints)
    run                      the resolved run config (img_model/train/config.py sections), None when converted
    training                 None, or {epoch, step, epoch_step, optimizer, scheduler, scaler, rng
                             (train/seeding.py), best}: the state --resume continues from, bit for bit
    metrics                  the evaluation that made this checkpoint best / last, or None
    origin                   converted checkpoints: {file, sha256, configs} of the authors' file

Written to a temporary name, fsync'd and renamed: a kill at any moment leaves the previous file intact.
Read with torch.load(weights_only=True). The first converter's format ({"config", "state_dict"}) still loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from extract.core.download import sha256_file
from extract.core.errors import ImgVmrError, UsageError, listed
from extract.core.files import write_atomically
from extract.text.tokenize import DEFAULT_TOKENIZER, tokenizer_recipe
from extract.text.vocabulary import Vocabulary
from extract.text.vocabulary_source import VocabularySource
from img_model.data.config import DataConfig
from img_model.data.dataset import HeldOut
from img_model.network.config import IMGConfig
from img_model.network.convert import CheckpointLayoutError, load_into, read_state_file
from img_model.network.model import IMG

log = logging.getLogger(f"img_vmr.{__name__}")


class CheckpointMismatchError(ImgVmrError):
    """A checkpoint does not fit the features, text or run it is used with."""


log = logging.getLogger("img_vmr.checkpoint")

CHECKPOINT_FORMAT = "img-vmr-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    config: IMGConfig
    state_dict: Mapping[str, torch.Tensor]
    source: str = "img-train"
    vocabulary: dict[str, Any] | None = None
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    run: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    origin: dict[str, Any] | None = None

    def model(self) -> IMG:
        """The model (eval mode) with these weights."""
        model = IMG(self.config)
        load_into(model, self.state_dict)
        return model.eval()

    @property
    def select_on(self) -> str | None:
        """The split the checkpoint was selected on: the run's, "test" for the authors' (§7.15)."""
        if self.source == "convert-official":
            return "test"
        return (self.run or {}).get("train", {}).get("select_on")

    # What evaluating a checkpoint takes from the run it records (img_model/train/config.py writes `run`); a
    # converted checkpoint records none and gets the published settings.

    def recorded(self, section: str, name: str, default: Any = None) -> Any:
        """A setting of the run this checkpoint records ([section] name), `default` when it records none."""
        return (self.run or {}).get(section, {}).get(name, default)

    @property
    def recorded_data(self) -> DataConfig:
        """The data the run trained with (DataConfig() for converted checkpoints: the authors' alignment rule)."""
        fields = dict((self.run or {}).get("data", {}))
        if "features" in fields:
            fields["features"] = tuple(fields["features"])
        return DataConfig(**fields)

    @property
    def held_out(self) -> HeldOut | None:
        """How the run carved its train-val split from the training videos (None: not trained by img-train)."""
        if self.run is None:
            return None
        return HeldOut(float(self.recorded("train", "val_fraction")), int(self.recorded("train", "val_seed")))

    def as_file(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "source": self.source,
            "config": dataclasses.asdict(self.config),
            "state_dict": dict(self.state_dict),
            "weights_sha256": weights_sha256(self.state_dict),
            "vocabulary": self.vocabulary,
            "provenance": self.provenance,
            "run": self.run,
            "training": self.training,
            "metrics": self.metrics,
            "origin": self.origin,
        }


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict: for each tensor in the order of its sorted names, a line "name dtype shape" and
    then its bytes in C order (as the machine stores them), so names, types, shapes and every byte count."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class _KeptWriteErrors:
    """A file handle that keeps the OSError of a failed write: torch.save reports it as an unspecific
    RuntimeError ("unexpected pos ..."), which would hide a full disk."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.error = handle, None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> None:
    """Write atomically (extract/core/files.py): a kill at any moment leaves the previous file intact. A write the
    disk refuses (full) is its OSError, and the previous file stays as it was."""
    file = checkpoint.as_file()

    def save(handle: BinaryIO) -> None:
        kept = _KeptWriteErrors(handle)
        try:
            torch.save(file, kept)
        except RuntimeError:
            if kept.error is None:
                raise
            raise kept.error from None

    write_atomically(Path(path), save)


def read_checkpoint(path: str | Path, expected: str = "an img_model checkpoint") -> Checkpoint:
    """A checkpoint written by save_checkpoint (or by the first converter, which wrote config + state_dict);
    `expected` names what the caller takes, for the message when the file is something else."""
    stored = read_state_file(path, expected)
    if not {"config", "state_dict"} <= set(stored):
        raise CheckpointLayoutError(
            f"{path} is a PyTorch file but not an img_model checkpoint (no 'config' / 'state_dict' entries); "
            f"expected {expected}"
        )
    if stored.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise CheckpointLayoutError(f"{path} is a {stored['format']!r} file, not an img_model checkpoint")
    if stored.get("format_version", CHECKPOINT_VERSION) > CHECKPOINT_VERSION:
        raise CheckpointLayoutError(
            f"{path} was written by a newer img-vmr (format {stored['format_version']}); upgrade to read it"
        )
    _check_weights(path, stored)
    return Checkpoint(
        config=_model_config(path, stored["config"]),
        state_dict=stored["state_dict"],
        source=stored.get("source", "convert-official"),
        vocabulary=stored.get("vocabulary"),
        provenance=stored.get("provenance") or {},
        run=_run_config(path, stored.get("run")),
        training=stored.get("training"),
        metrics=stored.get("metrics"),
        origin=stored.get("origin"),
    )


DAMAGED = "the file is damaged or was edited; use another checkpoint"


def _check_weights(path: str | Path, stored: Mapping[str, Any]) -> None:
    """The weights are those the file was saved with (their sha256), or a note says they cannot be checked."""
    recorded, state_dict = stored.get("weights_sha256"), stored["state_dict"]
    if not isinstance(state_dict, Mapping) or not all(isinstance(t, torch.Tensor) for t in state_dict.values()):
        raise CheckpointLayoutError(f"{path}: its state_dict is not a mapping of tensors; {DAMAGED}")
    if recorded is None:
        log.warning(
            "%s records no sha256 of its weights (written before img-vmr kept one): they cannot be checked", path
        )
    elif recorded != weights_sha256(state_dict):
        raise CheckpointLayoutError(
            f"{path} is damaged: its weights are not those it was saved with (their sha256 differs; a bad disk or "
            "copy); copy it again from where it was made, or use another checkpoint of the run"
        )


def _model_config(path: str | Path, fields: object) -> IMGConfig:
    """The checkpoint's IMGConfig, checked as a config file's is (one line naming the file), before any model is
    built from it."""
    if not isinstance(fields, Mapping):
        raise CheckpointLayoutError(f"{path}: its model config is not a mapping; {DAMAGED}")
    known = {field.name for field in dataclasses.fields(IMGConfig)}
    unknown = sorted(str(key) for key in set(fields) - known)
    if unknown:
        raise CheckpointLayoutError(f"{path}: its model config has unknown fields: {listed(unknown)}")
    try:
        return IMGConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()})
    except (ValueError, TypeError) as error:
        raise CheckpointLayoutError(f"{path}: its model config is not valid ({error}); {DAMAGED}") from None


def _run_config(path: str | Path, run: object) -> dict[str, Any] | None:
    """The checkpoint's run config: sections of settings (img_model/train/config.py), each value checked as a
    config file's is where the run is resumed (img_model/train/session.restored_run)."""
    if run is None:
        return None
    if not isinstance(run, Mapping) or not all(isinstance(section, Mapping) for section in run.values()):
        raise CheckpointLayoutError(f"{path}: its run config is not a mapping of sections; {DAMAGED}")
    return dict(run)


# --- from the authors' checkpoints ------------------------------------------------------------------------------


def convert_official_checkpoint(
    source: str | Path, text: str | Path | None = None, configs: str | Path | None = None, **overrides: object
) -> Checkpoint:
    """An authors' `.t7` as a Checkpoint that knows its inputs: the model shape (img_model/network/convert.py infers
    what the weights show and refuses what they do not), the vocabulary of the text store `text` (required for GloVe
    checkpoints; its vectors must be the checkpoint's GloVe rows, so that word ids mean the same words) and the
    text provenance. The feature provenance is unknown (img-eval then checks sizes only). Every error names
    `source` (or the --text / --configs file it is about)."""
    from img_model.data.text_store import QueryTexts
    from img_model.network.convert import load_official_checkpoint

    source = Path(source)
    model = load_official_checkpoint(source, configs, **overrides)
    config = model.config
    vocabulary, provenance = None, {}
    if text is None and config.query_features == "glove_char":
        raise CheckpointLayoutError(
            f"{source} embeds GloVe word ids: pass --text TEXT.h5 (img-extract text --embed glove:...) so that "
            "it carries the vocabulary its ids follow"
        )
    if text is not None:
        texts = QueryTexts(text)
        provenance["text"] = texts.provenance()
        if config.query_features == "glove_char":
            if texts.vocabulary is None:
                raise CheckpointMismatchError(f"{text} holds {texts.kind} features, not the GloVe ids {source} embeds")
            stored = model.video_branch.query_embedding.words.glove_vectors.numpy()
            vectors = texts.vocabulary.vectors
            if stored.shape != vectors.shape:
                raise CheckpointMismatchError(
                    f"{source} has {stored.shape[0]} GloVe rows of {stored.shape[1]}-d; {text} has "
                    f"{vectors.shape[0]} of {vectors.shape[1]}-d: another vocabulary"
                )
            differing = int((stored != vectors).any(axis=1).sum())
            if differing:
                raise CheckpointMismatchError(
                    f"{differing} of {len(vectors)} GloVe rows of {source} differ from {text}'s: another "
                    "vocabulary order or GloVe file, so word ids would point at other words"
                )
            if len(texts.vocabulary.chars) != config.char_vocab_size:
                raise CheckpointMismatchError(
                    f"{source} has {config.char_vocab_size} characters; {text} has {len(texts.vocabulary.chars)}"
                )
            vocabulary = texts.vocabulary.as_checkpoint()
    sha256 = sha256_file(source)
    return Checkpoint(
        config=config,
        state_dict=model.state_dict(),
        source="convert-official",
        vocabulary=vocabulary,
        provenance=provenance,
        origin={"file": source.name, "sha256": sha256},
    )


# --- the vocabulary of a checkpoint ------------------------------------------------------------------------------

# Where a checkpoint keeps the GloVe rows (both query embeddings hold the same frozen matrix).
CHECKPOINT_GLOVE_KEY = "video_branch.query_embedding.words.glove_vectors"


def checkpoint_vocabulary(path: Path) -> VocabularySource:
    """The GloVe vocabulary of a checkpoint (`img-extract text --vocabulary-from RUN/best.pt`): its words and
    characters, the GloVe rows its weights hold and the text recipe it records; UsageError (one line) when it has
    none or is not a checkpoint."""
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointLayoutError as error:
        raise UsageError(
            f"--vocabulary-from {path}: neither a text store nor a readable checkpoint ({error})"
        ) from None
    if checkpoint.vocabulary is None or CHECKPOINT_GLOVE_KEY not in checkpoint.state_dict:
        raise UsageError(
            f"--vocabulary-from {path}: the checkpoint carries no GloVe vocabulary (a model of precomputed text "
            "features, or converted without --text)"
        )
    vocabulary = Vocabulary(tuple(checkpoint.vocabulary["words"]), tuple(checkpoint.vocabulary["chars"]))
    if vocabulary.sha256() != checkpoint.vocabulary["sha256"]:
        raise UsageError(f"--vocabulary-from {path}: the checkpoint's vocabulary does not match its own sha256")
    vectors = checkpoint.state_dict[CHECKPOINT_GLOVE_KEY].float().numpy()
    recorded = checkpoint.provenance.get("text")
    if recorded is not None:
        recipe = dict(recorded.get("recipe", {}))
    else:  # converted: the checkpoint records only the vocabulary, whose hash is what img-eval then compares
        recipe = {
            "kind": "glove",
            **tokenizer_recipe(DEFAULT_TOKENIZER),
            "words": len(vocabulary.words),
            "chars": len(vocabulary.chars),
            "vocabulary_sha256": vocabulary.sha256(),
        }
    origin = {"path": str(path.resolve()), "kind": "checkpoint", "vocabulary_sha256": vocabulary.sha256()}
    return VocabularySource(vocabulary, vectors, recipe, origin)
