"""mkdocs hook: the CLI reference page (docs/cli.md) rendered from the commands themselves at build time.

The page holds the marker below; every build replaces it (and what follows it) with the `--help` of each console
script named in pyproject.toml's [project.scripts] and of each of its subcommands, depth first, as a terminal 110
columns wide shows it. The commands are found through pyproject.toml, so the page follows a renamed or moved CLI module
without an edit here, and an option added to a command is on the page the next time the site is built.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

MARKER = "<!-- cli-reference -->"
WIDTH = 110


def console_scripts(pyproject: Path) -> dict[str, click.Command]:
    """{script name: its click command} for every [project.scripts] entry, in the file's order."""
    scripts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"]
    commands = {}
    for name, target in scripts.items():
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{name} = {target!r} is not a click command; the CLI reference cannot render it")
        commands[name] = command
    return commands


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def command_tree(
    name: str, command: click.Command, parent: click.Context | None = None
) -> Iterator[tuple[click.Context, click.Command]]:
    """(context, command) for the command and each of its visible subcommands, depth first, in --help's order."""
    context = _context(command, name, parent)
    yield context, command
    if isinstance(command, click.Group):
        for sub_name in command.list_commands(context):
            sub = command.get_command(context, sub_name)
            if sub is not None and not sub.hidden:
                yield from command_tree(sub_name, sub, context)


def reference(pyproject: Path) -> str:
    """The page's body: a heading and the --help text of every command of every console script."""
    blocks = []
    for script, command in console_scripts(pyproject).items():
        for context, each in command_tree(script, command):
            path = context.command_path
            level = "#" * min(1 + len(path.split()), 6)
            blocks.append(f"{level} {path}\n\n```text\n{each.get_help(context).rstrip()}\n```\n")
    return "\n".join(blocks)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    head = markdown.split(MARKER, 1)[0]  # what follows the marker is for readers of the plain file
    return head + reference(Path(config["config_file_path"]).parent / "pyproject.toml")
