"""The configuration of a training run: model, objective, schedule and data, resolved from per-dataset defaults,
a TOML file and command-line flags (in that order of precedence), and written back as TOML into the run folder.

    [model]      IMGConfig fields (architecture; the input sizes come from the data and cannot be set)
    [objective]  ObjectiveConfig fields (loss weights, pseudo-label ε / γ, warm-ups)
    [train]      TrainConfig fields (epochs, batch, optimiser, evaluation and selection, seed)
    [data]       DataConfig fields (dataset, stores, feature names, alignment, missing audio)
    [runtime]    RuntimeConfig fields (device, precision, workers: how to run, not what to compute)

Defaults per dataset are the paper's (img_spec.md §4.6, §6): ActivityNet uses ε = 0.1, γ = 2; Charades-STA,
Charades-AudioMatter and custom datasets ε = 0.2, γ = 3; everything else is shared.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from extract.core.errors import UsageError
from extract.core.files import load_toml_file
from extract.core.precision import Precision
from img_model.data.config import DataConfig
from img_model.network.config import ACTIVITYNET_OBJECTIVE, IMGConfig, ObjectiveConfig, check_number, check_whole_number

SelectOn = Literal["val", "test"]
SelectionNoise = Literal["off", "fresh"]

MAX_SEED = 2**32 - 1  # numpy's global generator takes seeds below 2**32
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_EVALS_PER_EPOCH = 1_000
MAX_WORKERS = 256  # DataLoader worker processes asked for; each run uses at most the CPUs it may use (loader_workers)
MAX_THREADS = 1_024

# IMGConfig fields the data decides (feature and vocabulary sizes): never set by defaults, TOML or flags.
DATA_DERIVED = frozenset(
    {
        "video_feature_dim",
        "audio_feature_dim",
        "query_features",
        "glove_words",
        "word_dim",
        "char_vocab_size",
        "text_feature_dim",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation and selection protocol (§4.6, §4.7). Defaults: the paper's."""

    epochs: int = 100
    batch_size: int = 16
    eval_batch_size: int = 16  # the published position encoding makes outputs depend on the batch (§7.1)
    learning_rate: float = 5e-4  # AdamW, default betas and eps, linear decay to 0 per step, no warm-up
    weight_decay: float = 0.01  # not on biases and LayerNorms, by the authors' names (img_model/network/optim.py)
    clip_norm: float = 1.0
    evals_per_epoch: int = 2  # at steps kN + N//2 and (k+1)N (§4.7)
    select_on: SelectOn = "val"  # "test": the paper's protocol (§7.15), recorded in every report
    val_fraction: float = 0.1  # of the training videos, held out by video id (select_on = "val")
    val_seed: int = 0  # seeds which videos are held out: the same validation videos for every training seed
    # "fresh": every selection evaluation draws new slot noise (§7.2), as the authors' code does at each of its
    # test evaluations; "off": the initial slots are mu at every evaluation (deterministic selection).
    selection_noise: SelectionNoise = "off"
    # A seeded share of the training videos (by video id, seeded by val_seed: the same videos for every seed),
    # after the validation carve; the paper's Table 15.
    train_fraction: float = 1.0
    # After the run selected step S on validation data, train again from scratch on all the training videos
    # (train + val, the same schedule) for S steps and report that model, unselected: RUN/refit/.
    refit: bool = False
    refit_steps: int = 0  # set by img-train in RUN/refit/: train this many steps, no selection (0: a normal run)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.select_on not in ("val", "test"):
            raise ValueError(f"select_on must be 'val' or 'test', not {self.select_on!r}")
        if self.selection_noise not in ("off", "fresh"):
            raise ValueError(f"selection_noise must be 'off' or 'fresh', not {self.selection_noise!r}")
        if self.refit and self.select_on != "val":
            raise ValueError("refit needs select_on = 'val' (it retrains on the validation videos too)")
        check_whole_number("refit_steps", self.refit_steps, 0, MAX_EPOCHS * 10**6)
        check_number("train_fraction", self.train_fraction, 0.0, 1.0, above_low=True)
        check_whole_number("epochs", self.epochs, 1, MAX_EPOCHS)
        check_whole_number("batch_size", self.batch_size, 1, MAX_BATCH)
        check_whole_number("eval_batch_size", self.eval_batch_size, 1, MAX_BATCH)
        check_whole_number("evals_per_epoch", self.evals_per_epoch, 1, MAX_EVALS_PER_EPOCH)
        check_whole_number("seed", self.seed, 0, MAX_SEED)
        check_whole_number("val_seed", self.val_seed, 0, MAX_SEED)
        check_number("val_fraction", self.val_fraction, 0.0, 1.0, above_low=True, below_high=True)
        for name in ("learning_rate", "weight_decay", "clip_norm"):
            check_number(name, getattr(self, name), 0.0)


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run (not what to compute); may change on --resume."""

    device: str = "auto"
    precision: str = "fp32"  # extract/core/precision.py
    compile: bool = False
    workers: int = 2  # DataLoader worker processes (the data is seeded per query, not per worker)
    threads: int = 0  # torch CPU threads (0: torch's default); small models often run fastest on 1
    progress: bool = True
    log_every: int = 10  # per-step TensorBoard scalars every this many steps (epoch means are always logged)

    def __post_init__(self) -> None:
        Precision(self.precision)  # one of fp32, bf16, fp16 (UsageError otherwise)
        if type(self.device) is not str:
            raise ValueError(f"device must be a string (auto, cpu, cuda or cuda:N), not {self.device!r}")
        check_whole_number("workers", self.workers, 0, MAX_WORKERS)
        check_whole_number("threads", self.threads, 0, MAX_THREADS)
        check_whole_number("log_every", self.log_every, 1, 10**9)


@dataclass(frozen=True)
class TrainingRunConfig:
    """The whole configuration of a training run, its sections as in RUN/config.toml."""

    model: IMGConfig
    objective: ObjectiveConfig
    train: TrainConfig
    data: DataConfig
    runtime: RuntimeConfig

    def __post_init__(self) -> None:
        self.model.check_batch_size(self.train.batch_size, "batch_size")
        self.model.check_batch_size(self.train.eval_batch_size, "eval_batch_size")

    def recipe(self) -> dict[str, Any]:
        """Everything that decides the numbers: compared on --resume (runtime excluded)."""
        return {name: section for name, section in as_dict(self).items() if name != "runtime"}


SECTIONS: dict[str, type] = {
    "model": IMGConfig,
    "objective": ObjectiveConfig,
    "train": TrainConfig,
    "data": DataConfig,
    "runtime": RuntimeConfig,
}


def dataset_defaults(dataset: str) -> dict[str, dict[str, Any]]:
    """The paper's settings for a dataset, as section overrides of the dataclass defaults."""
    if dataset == "activitynet":
        return {"objective": dataclasses.asdict(ACTIVITYNET_OBJECTIVE)}
    return {}


def read_toml(path: Path) -> dict[str, dict[str, Any]]:
    """A config file's sections, checked against the fields they may set (one-line errors)."""
    raw = load_toml_file(path, f"--config {path}", "an img-train config")
    for section, values in raw.items():
        if section not in SECTIONS:
            raise UsageError(f"{path}: unknown section [{section}]; use {', '.join(f'[{s}]' for s in SECTIONS)}")
        if not isinstance(values, dict):
            raise UsageError(f"{path}: {section} must be a section ([{section}]), not a value")
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"{path}: [{section}] has no setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return raw


def _merge(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for layer in layers:
        for section, values in layer.items():
            merged[section].update({k: v for k, v in values.items() if v is not None})
    return merged


def build_section(section: str, values: Mapping[str, Any], where: str) -> Any:
    """A section's dataclass from its values: each of a type its field takes (lists for tuples), then each
    dataclass's own checks; one UsageError line saying where (a config file, "options", a checkpoint)."""
    cls = SECTIONS[section]
    defaults = cls()
    if not isinstance(values, Mapping):
        raise UsageError(f"{where}: [{section}] must be a section of settings, not {reprlib.repr(values)}")
    fields = {}
    for name, value in values.items():
        if not hasattr(defaults, name):
            raise UsageError(f"{where}: [{section}] has no setting {reprlib.repr(name)}")
        default = getattr(defaults, name)
        if section == "model" and name == "audio_weight":  # a mode's name or a number: IMGConfig checks which
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise UsageError(
                    f"{where}: [model] audio_weight must be a number from 0 to 1 or a mode's name, not "
                    f"{reprlib.repr(value)}"
                )
        elif isinstance(default, tuple):
            if not isinstance(value, list | tuple) or not all(isinstance(v, int | float | str) for v in value):
                raise UsageError(f"{where}: [{section}] {name} must be a list of values, not {reprlib.repr(value)}")
            value = tuple(value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise UsageError(f"{where}: [{section}] {name} must be true or false, not {reprlib.repr(value)}")
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif type(default) in (int, float, str) and type(value) is not type(default):
            kind = {int: "a whole number", float: "a number", str: "a string"}[type(default)]
            raise UsageError(f"{where}: [{section}] {name} must be {kind}, not {reprlib.repr(value)}")
        fields[name] = value
    try:
        return cls(**fields)
    except (ValueError, TypeError) as error:
        raise UsageError(f"{where}: [{section}] {error}") from None


def resolve(
    config_file: Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    derived_model: Mapping[str, Any] | None = None,
) -> TrainingRunConfig:
    """The dataset's defaults, then the TOML file, then the flags (`overrides`, None values ignored); the model's
    input sizes (`derived_model`, from the data) always win."""
    file_layer = read_toml(config_file) if config_file else {}
    for name in sorted(DATA_DERIVED & set(file_layer.get("model", {}))):
        raise UsageError(f"{config_file}: [model] {name} is set by the data, not by the config")
    flag_layer = {section: dict(values) for section, values in (overrides or {}).items()}
    dataset = flag_layer.get("data", {}).get("dataset") or file_layer.get("data", {}).get("dataset")
    if not dataset:
        raise UsageError("no dataset given; pass --dataset NAME|FILE.jsonl (or set [data] dataset in --config)")
    merged = _merge(dataset_defaults(dataset), file_layer, flag_layer, {"model": dict(derived_model or {})})
    where = str(config_file) if config_file else "options"
    return TrainingRunConfig(**{section: build_section(section, values, where) for section, values in merged.items()})


def as_dict(config: TrainingRunConfig) -> dict[str, dict[str, Any]]:
    return {section: dataclasses.asdict(getattr(config, section)) for section in SECTIONS}


def from_dict(sections: Mapping[str, Mapping[str, Any]], where: str = "checkpoint") -> TrainingRunConfig:
    """A TrainingRunConfig from `as_dict` output (e.g. a checkpoint's); `where` the errors name."""
    unknown = sorted(str(name) for name in set(sections) - set(SECTIONS))
    if unknown:
        raise UsageError(f"{where}: unknown section [{unknown[0]}]")
    return TrainingRunConfig(
        **{section: build_section(section, sections.get(section, {}), where) for section in SECTIONS}
    )


# --- writing TOML (the standard library reads it only) ---------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return (
            repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else f"{'-' if value < 0 else ''}inf")
        )
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(config: TrainingRunConfig, header: str = "") -> str:
    """The resolved config as TOML that `--config` reads back to the same TrainingRunConfig (the model's input sizes
    are written as comments: the data sets them)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, values in as_dict(config).items():
        lines += ["", f"[{section}]"]
        for name, value in values.items():
            comment = "# " if section == "model" and name in DATA_DERIVED else ""
            lines.append(f"{comment}{name} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def sections_toml(sections: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """Some sections of a config (a partial one, e.g. merged from a recipe and a user's file) as TOML that
    `--config` reads."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, values in sections.items():
        if values:
            lines += ["", f"[{section}]", *(f"{name} = {_toml_value(value)}" for name, value in values.items())]
    return "\n".join(lines).lstrip("\n") + "\n"
