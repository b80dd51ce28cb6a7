"""Regenerate the settings reference at the end of docs/usage.md from the config dataclasses:

python docs/make_reference.py
"""

from pathlib import Path

from distillery.cli import reference_markdown

MARK = "## Settings reference"
path = Path(__file__).with_name("usage.md")
text = path.read_text()
head = text[: text.index(MARK)] if MARK in text else text.rstrip() + "\n\n"
path.write_text(
    f"{head}{MARK}\n\nEvery setting, the subcommands that read it, and its whole help text (`--help-all` "
    "shows the same).\n\n" + reference_markdown()
)
print(f"wrote {path}")
