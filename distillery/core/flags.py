"""Settings to flags: the generic part of the command line. A config dataclass's ``option()`` fields become
argparse flags (:func:`add_flag`), and the values parsed or read from a file become that dataclass again
(:func:`build`). ``distillery.cli`` says which stage reads which settings and groups them for ``--help``."""

from __future__ import annotations

import argparse
import dataclasses
import shutil

from distillery.core.options import default_of, settings_of, short_help, type_name

__all__ = ["Formatter", "Renamed", "add_flag", "build", "split_shown"]


def _shown_default(f: dataclasses.Field) -> str:
    default = default_of(f)
    if (
        isinstance(default, bool)
        or default is None
        or default in ("", [])
        or (isinstance(default, (int, float)) and default == -1)
    ):
        return ""
    return f" [{','.join(default) if isinstance(default, list) else default}]"


METAVARS = {"int": "N", "float": "X", "str": "VALUE", "list[str]": "A,B"}


def add_flag(group, f: dataclasses.Field, full: bool, shown: bool) -> None:
    """One setting as a flag. A bool is --name (or --no-name where it defaults to on); the other
    spelling is accepted but not listed."""
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    registry = f.metadata.get("registry")
    text = f.metadata.get("help", "")
    if registry is not None and full:
        text = f"{text} ({registry.describe()})"
    if not full:
        text = short_help(f)
        text += f": {', '.join(registry.names())}" if registry is not None and len(registry.names()) > 3 else ""
    text += _shown_default(f)
    help_text = text.replace("%", "%%") if shown else argparse.SUPPRESS
    kind = type_name(f)
    if kind in ("bool", "bool | None"):
        on = f.default is True
        if on and full and shown:
            help_text = f"on by default, this turns it off; {help_text}"
        group.add_argument(
            "--no-" + flag[2:] if on else flag,
            dest=f.name,
            action="store_false" if on else "store_true",
            default=None,
            help=help_text,
        )
        group.add_argument(
            flag if on else "--no-" + flag[2:],
            dest=f.name,
            action="store_true" if on else "store_false",
            default=None,
            help=argparse.SUPPRESS,
        )
        return
    metavar = (
        "|".join(registry.names())
        if registry is not None and len(registry.names()) <= 3
        else "|".join(f.metadata["choices"])
        if f.metadata.get("choices") and len(f.metadata["choices"]) <= 3
        else f.metadata.get("metavar") or METAVARS.get(kind, "VALUE")
    )
    group.add_argument(
        flag, dest=f.name, default=None, metavar=metavar, help=help_text
    )  # converted and checked by coerce()


class Renamed(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was renamed: use {self.const}")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """One line per flag on an 80-column terminal (the help column starts at 26)."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=26, width=max(shutil.get_terminal_size((100, 24)).columns, 80))

    def _split_lines(self, text, width):
        """Wrapped at spaces only: a hyphenated name (least-confident, mean+em) stays whole."""
        import textwrap

        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


def split_shown(members: list, shown) -> list[list]:
    """``[the members --help shows, the ones only --help-all shows]``, by the predicate ``shown``."""
    return [[f for f in members if shown(f)], [f for f in members if not shown(f)]]


def build(cls, values: dict):
    """An instance of one stage's config from the resolved values that belong to it (``__post_init__``
    checks ranges and refuses NaN and infinity in every float field). The values of a registry entry's
    own settings go to the config's ``settings`` field; one of an entry other than the chosen one is
    an error there, naming the entry it belongs to."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        registry = f.metadata.get("entry_settings")
        if registry is None:
            if f.name in values:
                kwargs[f.name] = values[f.name]
            continue
        declared = {g.name for name in registry.names() for g in dataclasses.fields(settings_of(registry, name))}
        kwargs[f.name] = {k: v for k, v in values.items() if k in declared}
    return cls(**kwargs)
