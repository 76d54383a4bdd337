"""An experiment: one base training recipe, several seeds and a grid over its settings, as a frozen plan of runs.

    # experiment.toml (img-pipeline experiment experiment.toml --out DIR)
    recipe = "base.toml"                 # img-train's --config file (paths in it: relative to it), or inline:
                                         # [recipe.model], [recipe.train], [recipe.data], ... sections
    seeds = [0, 1, 2, 3, 4]              # or "0-4"
    train_fraction = 0.5                 # optional: [train] train_fraction of every run (the paper's Table 15)

    [grid]                               # the product of every key's values; "section.setting" as img-train's
    "objective.distill_temperature" = [0.5, 1, 2, 4]
    "train.select_on" = ["val", "test"]

Every value is checked here, before anything runs, as img-train checks its --config (the same code): an unknown
key, section or setting is refused in one line naming the file and the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extract.core.errors import UsageError
from extract.core.files import load_toml_file
from img_model.train.config import MAX_SEED, SECTIONS, TrainingRunConfig, build_section, read_toml

TOP_LEVEL = ("recipe", "seeds", "train_fraction", "grid")
MAX_SEEDS = 1_000
MAX_RUNS = 10_000  # cells x seeds of one experiment
MAX_VALUES = 1_000  # values of one grid key
RUNS_FOLDER = "runs"
FOLDER_NAME_LIMIT = 80  # characters of a cell's folder name before it is shortened with a hash
# DataConfig settings that name files: relative paths are relative to the TOML file that holds them
DATA_PATHS = ("features", "text", "data_dir", "dataset")


@dataclass(frozen=True)
class Cell:
    """One setting of the grid: its values by dotted key, and the folder its runs live in."""

    index: int
    values: Mapping[str, Any]
    folder: str  # relative to the experiment's --out

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={format_value(value)}" for key, value in self.values.items()) or "base recipe"


@dataclass(frozen=True)
class Experiment:
    path: Path
    recipe: Mapping[str, Mapping[str, Any]]  # the base recipe's sections (img-train --config), paths absolute
    seeds: tuple[int, ...]
    grid: Mapping[str, tuple[Any, ...]]  # dotted key -> values, in the file's order
    cells: tuple[Cell, ...]

    def sections(self, cell: Cell, seed: int) -> dict[str, dict[str, Any]]:
        """The img-train --config sections of one run: the base recipe, the cell's values, the seed."""
        sections = {name: dict(values) for name, values in self.recipe.items()}
        for key, value in cell.values.items():
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = value
        sections.setdefault("train", {})["seed"] = seed
        return sections


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "+".join(format_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def known_keys() -> list[str]:
    return [f"{section}.{field.name}" for section, cls in SECTIONS.items() for field in dataclasses.fields(cls)]


def _nearest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def load_experiment(path: Path) -> Experiment:
    """The experiment of a TOML file, every value checked (UsageError, one line naming the file and the key)."""
    raw = load_toml_file(path, str(path), "an experiment", "; give the experiment's TOML file")
    for key in raw:
        if key not in TOP_LEVEL:
            raise UsageError(
                f"{path}: unknown key {key!r}{_nearest(key, list(TOP_LEVEL))} (known: {', '.join(TOP_LEVEL)})"
            )
    if "recipe" not in raw:
        raise UsageError(f'{path}: no recipe; set recipe = "base.toml" (img-train\'s --config) or [recipe.data] ...')
    recipe = _recipe(path, raw["recipe"])
    seeds = _seeds(path, raw.get("seeds", [0]))
    grid = _grid(path, raw.get("grid", {}))
    if "train_fraction" in raw:
        if "train.train_fraction" in grid:
            raise UsageError(f"{path}: train_fraction is set twice (top level and in [grid]); keep one")
        _check_value(path, recipe, "train.train_fraction", raw["train_fraction"], "train_fraction")
        recipe.setdefault("train", {})["train_fraction"] = raw["train_fraction"]
    for key, values in grid.items():
        for value in values:
            _check_value(path, recipe, key, value, f"[grid] {key!r}")
    combos = list(itertools.product(*grid.values()))
    if len(combos) * len(seeds) > MAX_RUNS:
        raise UsageError(
            f"{path}: {len(combos)} settings x {len(seeds)} seeds = {len(combos) * len(seeds)} runs; at most {MAX_RUNS}"
        )
    cells = tuple(
        Cell(index, dict(zip(grid, combo, strict=True)), _folder(index, dict(zip(grid, combo, strict=True))))
        for index, combo in enumerate(combos)
    )
    experiment = Experiment(path, recipe, seeds, grid, cells)
    for cell in cells:  # settings that are fine alone but not together (e.g. a batch size the model refuses)
        _check_sections(path, experiment.sections(cell, seeds[0]), f"setting {cell.label}")
    return experiment


def _recipe(path: Path, value: Any) -> dict[str, dict[str, Any]]:
    if isinstance(value, str):
        file = (path.parent / value).resolve()
        if not file.is_file():
            raise UsageError(f"{path}: recipe {value!r}: {file} does not exist")
        sections, base = read_toml(file), file.parent
    elif isinstance(value, dict):
        for section, values in value.items():
            if section not in SECTIONS:
                raise UsageError(
                    f"{path}: unknown section [recipe.{section}]{_nearest(section, list(SECTIONS))} "
                    f"(known: {', '.join(SECTIONS)})"
                )
            if not isinstance(values, dict):
                raise UsageError(f"{path}: recipe.{section} must be a section ([recipe.{section}]), not a value")
            known = [field.name for field in dataclasses.fields(SECTIONS[section])]
            for name in values:
                if name not in known:
                    raise UsageError(f"{path}: [recipe.{section}] has no setting {name!r}{_nearest(name, known)}")
        sections, base = value, path.parent
    else:
        raise UsageError(f"{path}: recipe must be a file name or [recipe.SECTION] tables, not {reprlib.repr(value)}")
    sections = {name: dict(values) for name, values in sections.items()}
    data = sections.get("data", {})
    for name in DATA_PATHS:
        if name in data:
            data[name] = _absolute(data[name], base, name)
    if "seed" in sections.get("train", {}):
        raise UsageError(f"{path}: the recipe sets [train] seed; the experiment's seeds = [...] set it")
    _check_sections(path, sections, "recipe")
    return sections


def _absolute(value: Any, base: Path, name: str) -> Any:
    def one(item: Any) -> Any:
        if not isinstance(item, str) or not item:
            return item
        if name == "dataset" and not item.endswith(".jsonl"):
            return item  # a dataset's name, not a file
        return str((base / item).resolve()) if not Path(item).is_absolute() else item

    return [one(item) for item in value] if isinstance(value, list) else one(value)


def _seeds(path: Path, value: Any) -> tuple[int, ...]:
    seeds: list[Any]
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
        if not match or int(match[1]) > int(match[2]):
            raise UsageError(f'{path}: seeds {value!r}: write a range as "FIRST-LAST" (e.g. "0-4") or a list')
        first, last = int(match[1]), int(match[2])
        if last - first + 1 > MAX_SEEDS:
            raise UsageError(f"{path}: seeds {value!r} are {last - first + 1} seeds; at most {MAX_SEEDS}")
        seeds = list(range(first, last + 1))
    elif isinstance(value, list):
        seeds = value
    else:
        raise UsageError(f'{path}: seeds must be a list of whole numbers or a range "0-4", not {reprlib.repr(value)}')
    if not seeds or len(seeds) > MAX_SEEDS:
        raise UsageError(f"{path}: seeds must list 1 to {MAX_SEEDS} seeds, not {len(seeds)}")
    for seed in seeds:
        if type(seed) is not int or not 0 <= seed <= MAX_SEED:
            raise UsageError(f"{path}: seeds: {reprlib.repr(seed)} is not a whole number in [0, {MAX_SEED}]")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"{path}: seeds lists a seed twice ({seeds})")
    return tuple(seeds)


def _grid(path: Path, value: Any) -> dict[str, tuple[Any, ...]]:
    if not isinstance(value, dict):
        raise UsageError(f'{path}: grid must be a table ([grid] "section.setting" = [values]), not a value')
    keys = known_keys()
    grid = {}
    for key, values in value.items():
        if isinstance(values, dict):  # [grid] model.event_num = ... without quotes makes a nested table
            raise UsageError(f'{path}: [grid] {key}: quote a dotted key ("{key}.{next(iter(values), "")}" = [...])')
        if key not in keys:
            raise UsageError(f'{path}: [grid] unknown key {key!r}{_nearest(key, keys)} (keys are "section.setting")')
        if key == "train.seed":
            raise UsageError(f"{path}: [grid] 'train.seed': set the seeds with seeds = [...] at the top level")
        if key.startswith("runtime."):
            raise UsageError(
                f"{path}: [grid] {key!r}: runtime settings do not change the numbers; set them in the recipe"
            )
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_VALUES:
            raise UsageError(
                f"{path}: [grid] {key!r} must be a list of 1 to {MAX_VALUES} values, not {reprlib.repr(values)}"
            )
        if len({repr(v) for v in values}) != len(values):
            raise UsageError(f"{path}: [grid] {key!r} lists a value twice ({reprlib.repr(values)})")
        grid[key] = tuple(values)
    return grid


def _check_value(path: Path, recipe: Mapping[str, Mapping[str, Any]], key: str, value: Any, where: str) -> None:
    section, name = key.split(".", 1)
    values = {**recipe.get(section, {}), name: value}
    try:
        build_section(section, values, "")
    except UsageError as error:
        raise UsageError(f"{path}: {where} = {reprlib.repr(value)}: {str(error).removeprefix(': ')}") from None


def _check_sections(path: Path, sections: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """The sections as img-train would build them (the data's sizes aside), one UsageError line when they cannot."""
    try:
        built = {name: build_section(name, sections.get(name, {}), "") for name in SECTIONS}
        TrainingRunConfig(**built)
    except UsageError as error:
        raise UsageError(f"{path}: {where}: {str(error).removeprefix(': ')}") from None
    except ValueError as error:
        raise UsageError(f"{path}: {where}: {error}") from None


def _folder(index: int, values: Mapping[str, Any]) -> str:
    """A readable folder name for a cell, unique by its index: c03-distill_temperature=2."""
    words = "_".join(f"{key.split('.', 1)[1]}={format_value(value)}" for key, value in values.items()) or "base"
    name = re.sub(r"[^A-Za-z0-9._=+-]", "-", words)
    if len(name) > FOLDER_NAME_LIMIT:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: FOLDER_NAME_LIMIT - 9]}-{digest}"
    return f"{RUNS_FOLDER}/c{index:02d}-{name}"
