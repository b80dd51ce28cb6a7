"""Settings as typed dataclass fields: the ``option()`` helper every stage's config uses, the finite-number
check, and the conversion of YAML values and flags to a field's type."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from pathlib import Path

import yaml

from distillery.core.errors import UserError
from distillery.core.registry import student_kinds
from distillery.core.secrets import scrub

__all__ = ["option", "check_finite", "coerce", "read_config", "student_folder", "check_student_folder"]


def option(default, help: str, **kw):
    """A dataclass field with a help text (shown by ``--help``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def check_finite(config) -> None:
    """Refuse NaN and infinity in every float field of a config dataclass (``nan <= 0`` is False,
    so a range check alone lets them through: ``--temperature nan`` trained a NaN student)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{f.name}: expected a finite number, found {value}")


KINDS = {"int": "a whole number", "float": "a finite number", "str": "a string", "bool": "true or false",
         "bool | None": "true or false", "list[str]": "a list or a comma-separated string"}
TRUE, FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _shown(name: str, value) -> str:
    """A value as an error message may show it: never a header's value or anything key-like."""
    if name == "extra_headers":
        return "a value (not shown: it may hold a secret)"
    text = scrub(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def coerce(f: dataclasses.Field, value, where: str | None = None):
    """A YAML value or a flag as its field's type, converting only what is unambiguous.

    ``'0.5'`` or ``1`` for a float, ``'3'`` for an int, ``'true'``/``'false'`` for a bool, a
    comma-separated string for a list (``extra_headers`` also takes a ``{Name: value}`` mapping);
    NaN and infinity are refused, so is an explicitly empty list where an empty one would
    silently mean the default (``--labels ','``). Anything else is a :class:`UserError` of one
    line: where (the file; None for a flag), key, value, expected type.
    """
    kind, name = str(f.type), f.name
    key = f"{where}: {name}" if where else "--" + name.replace("_", "-")

    def wrong(extra: str = ""):
        return UserError(f"{key}: expected {KINDS.get(kind, kind)} ({kind}){extra}, found {_shown(name, value)}")

    if value is None:
        if kind.endswith("| None"):
            return None
        raise wrong("; remove the key to keep the default")
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
            return value.strip().lower() in TRUE
        raise wrong()
    if kind == "int":
        if isinstance(value, bool):
            raise wrong()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value.strip())
        raise wrong()
    if kind == "float":
        if isinstance(value, bool):
            raise wrong()
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise wrong() from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong()
        return float(value)
    if kind.startswith("list"):
        if isinstance(value, dict) and name == "extra_headers":  # the YAML mapping form of headers
            value = [f"{k}: {v}" for k, v in value.items()]
        if isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        if not isinstance(value, (list, tuple)) or any(isinstance(x, (dict, list, tuple, bool)) or x is None for x in value):
            raise wrong()
        value = [str(x).strip() for x in value]
        if not value and f.metadata.get("nonempty"):
            raise UserError(f"{key}: expected at least one value, comma-separated; found none (leave it out to keep the default)")
        return value
    if kind == "str":
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise wrong()
        choices = f.metadata.get("choices")
        registry = f.metadata.get("registry")
        if registry is not None:
            choices = [*f.metadata.get("extra_choices", ()), *registry.names()]
        if choices and value not in choices:
            raise UserError(f"{key}: expected one of {', '.join(choices)}, found {_shown(name, value)}")
        return value
    return value


def read_config(path: Path) -> dict:
    """A YAML config file as ``{setting: value}`` (dashes in keys read as underscores).

    A missing file, malformed YAML (with its line) or anything but a flat mapping is a one-line
    :class:`UserError`.
    """
    if not path.is_file():
        raise UserError(f"config file not found: '{path}'")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"{path}: expected a UTF-8 YAML file; found other bytes") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: {where}not valid YAML ({problem}); expected flat 'setting: value' lines") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of setting: value; found {type(values).__name__}")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise UserError(f"{path}: expected setting names as keys; found {bad[:3]}")
    return {k.replace("-", "_"): v for k, v in values.items()}


def student_folder(cfg) -> Path:
    """The student folder a config names: ``--student``, else ``OUT/student`` (``--out`` is the run folder)."""
    return Path(cfg.student or f"{cfg.out}/student")


def check_student_folder(value: str, flag: str) -> None:
    """``--student`` is a folder in every command; a student kind's name there (the old meaning in
    distill: ``--student llama-lora``) is an error naming the flag that took it over."""
    if value in student_kinds and not Path(value).is_dir():
        raise UserError(f"{flag.lstrip('-')}: expected the student folder (default OUT/student); found '{value}', a student kind: "
                        f"pass it as --student-kind {value} (student_kind: in a config file)")
