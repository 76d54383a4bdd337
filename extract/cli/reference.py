"""The README's CLI reference, generated from the commands' own --help.

python -m extract.cli.reference --write README.md    # refresh the section between the markers
python -m extract.cli.reference                      # print it
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from extract.cli.main import main

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
WIDTH = 110


def _help(command: click.Command, name: str, parent: click.Context | None = None) -> str:
    context = click.Context(
        command,
        info_name=name,
        parent=parent,
        terminal_width=WIDTH,
        max_content_width=WIDTH,
        help_option_names=["-h", "--help"],
    )
    return command.get_help(context)


def reference() -> str:
    root = click.Context(main, info_name="img-extract")
    blocks = [("img-extract --help", _help(main, "img-extract"))]
    for name in ("run", "inspect", "compact", "merge"):
        blocks.append((f"img-extract {name} --help", _help(main.commands[name], name, root)))
    return "\n\n".join(f"`{title}`\n\n```text\n{text}\n```" for title, text in blocks)


def update(readme: Path) -> bool:
    """Rewrite the marked section of readme; return True when it changed."""
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{reference()}\n{END}{tail}"
    readme.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        update(Path(sys.argv[2]))
    else:
        print(reference())
