"""The documentation: the mkdocs site builds strictly, its CLI reference holds every command and option, its API
pages render the classes' docstrings, and the README (the front door) stays short, links only to files that exist
and its 5-minute tour uses options the commands have and files the repository holds."""

from __future__ import annotations

import html
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _scripts() -> dict[str, click.Command]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    commands = {}
    for name, target in scripts.items():
        module, _, attribute = target.partition(":")
        commands[name] = getattr(importlib.import_module(module), attribute)
    return commands


def _commands(
    path: str, command: click.Command, parent: click.Context | None = None
) -> Iterator[tuple[str, click.Command]]:
    """(command path, command) for a script and every visible subcommand, as --help lists them."""
    yield path, command
    if isinstance(command, click.Group):
        context = click.Context(command, info_name=path.split()[-1], parent=parent)
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                yield from _commands(f"{path} {name}", sub, context)


def _text(page: Path) -> str:
    """The visible text of a built page (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built the way `mkdocs build --strict` builds it (a warning fails the build), into a temp folder."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason='the docs tools come with the dev extra: pip install -e ".[dev]"')
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return out


def test_the_site_builds_strictly_with_every_page_of_docs_in_its_nav(site: Path) -> None:
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(entries: list) -> Iterator[str]:
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from pages(value) if isinstance(value, list) else [value]

    in_nav = set(pages(config["nav"]))
    written = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert in_nav == written
    for page in in_nav:
        built = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert built.is_file(), page


def test_the_cli_reference_holds_every_command_and_every_option(site: Path) -> None:
    page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    text = _text(site / "cli" / "index.html")
    for script, command in _scripts().items():
        for path, each in _commands(script, command):
            assert f'id="{path.replace(" ", "-")}"' in page, f"no section for {path}"
            usage = f"Usage: {path} "
            assert usage in text, f"no --help of {path}"
            section = text[text.index(usage) :]
            for parameter in each.params:
                if isinstance(parameter, click.Option) and not parameter.hidden:
                    for flag in parameter.opts + parameter.secondary_opts:
                        assert flag in section.split("Usage: ", 2)[1], f"{path} {flag} is not in the reference"


def test_the_api_pages_render_the_docstrings(site: Path) -> None:
    from extract.store import FeatureStore
    from img_model.data.dataset import MomentDataset
    from img_model.network.model import IMG
    from img_model.predict.predictor import Predictor

    for page, obj, members in (
        ("store", FeatureStore, ("track", "provenance", "failures")),
        ("predictor", Predictor, ("from_checkpoint", "predict")),
        ("dataset", MomentDataset, ("cache_features",)),
        ("model", IMG, ("forward",)),
    ):
        text = re.sub(r"\s+", " ", _text(site / "api" / page / "index.html"))
        first_line = re.sub(r"\s+", " ", (obj.__doc__ or "").strip().split("\n\n")[0])
        assert first_line and first_line[:60] in text, (page, first_line)
        for member in members:
            assert member in text, (page, member)


def test_the_tour_and_the_commands_of_the_readme_are_on_the_site(site: Path) -> None:
    tour = _text(site / "tour" / "index.html")
    assert "img-train --dataset docs/tour/queries.jsonl" in tour and "--8<--" not in tour
    install = _text(site / "install" / "index.html")
    assert "HF_HUB_OFFLINE=1 .venv/bin/python -m pytest" in install and "--8<--" not in install


def test_the_readme_is_a_short_front_door_whose_links_exist() -> None:
    readme = _readme()
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert "mkdocs serve" in readme
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def _tour_commands() -> list[list[str]]:
    tour = _readme().split("--8<-- [start:tour]", 1)[1].split("--8<-- [end:tour]", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)\n```", tour, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r'"[^"]*\$\([^"]*\)"', "SUBSTITUTED", line)  # $(...) is the shell's, not an argument
            commands.append(shlex.split(line))
    return commands


def test_the_tour_uses_options_the_commands_have_and_files_the_repository_holds() -> None:
    scripts = _scripts()
    commands = _tour_commands()
    assert [words[0].removeprefix(".venv/bin/") for words in commands] == [
        "img-extract",
        "img-extract",
        "img-extract",
        "img-train",
        "img-eval",
        "img-predict",
    ]
    for words in commands:
        script = words[0].removeprefix(".venv/bin/")
        command = scripts[script]
        args = words[1:]
        while isinstance(command, click.Group):  # a named subcommand, else the group's default command
            defaults = [name for name in ("run", "train", "answer") if name in command.commands]
            name = args[0] if args and args[0] in command.commands else defaults[0]
            args = args[1:] if args and args[0] == name else args
            command = command.commands[name]
        flags = {flag for p in command.params if isinstance(p, click.Option) for flag in p.opts + p.secondary_opts}
        for word in args:
            if word.startswith("--"):
                assert word in flags, f"the tour's {script} has no option {word}"
            elif "/" in word and not word.startswith("build/"):
                assert (ROOT / word).exists(), f"the tour names {word}, which the repository does not hold"
    clip = {p.stem for p in (ROOT / "tests" / "data" / "media").glob("*.mp4")}
    queries = [json.loads(line) for line in (ROOT / "docs" / "tour" / "queries.jsonl").read_text().splitlines()]
    assert {q["video_id"] for q in queries} <= clip and {q["split"] for q in queries} == {"train", "val", "test"}
