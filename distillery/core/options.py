"""Settings as typed dataclass fields: the ``option()`` helper every stage's config uses, the finite-number
check, and the conversion of YAML values and flags to a field's type."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import field
from pathlib import Path

import yaml

from distillery.core.errors import UserError
from distillery.core.registry import student_kinds
from distillery.core.secrets import scrub

__all__ = ["option", "check_settings", "coerce", "read_config", "student_folder", "check_student_folder", "FORMS"]

SEED_MAX = 2**32 - 1  # numpy's seeds are 0 ..< 2**32
INT_MAX = 2**31 - 1  # a count or a size beyond this is a typo, and torch's int32 indices overflow


def option(
    default,
    help: str,
    *,
    ge=None,
    gt=None,
    le=None,
    lt=None,
    form: str | None = None,
    choices: tuple | None = None,
    registry=None,
    extra_choices: tuple = (),
    nonempty: bool = False,
    flag: str | None = None,
):
    """A dataclass field with a help text (shown by ``--help``) and the values it accepts.

    Args:
        ge, gt, le, lt: the range of a number (>=, >, <=, <). Every int field has one: an int
            without ``le``/``lt`` is bounded by ``INT_MAX``, and one without ``ge``/``gt`` must
            declare it (tests/test_settings.py enumerates every field).
        form: the shape of a string, a key of :data:`FORMS` (``device``, ``env_name``).
        choices, registry, extra_choices, nonempty: the values a string or list accepts, as :func:`coerce` reads them.
        flag: the flag's spelling where it is not ``--name`` (``--import``).
    """
    given = {
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "form": form,
        "choices": choices,
        "registry": registry,
        "extra_choices": extra_choices,
        "nonempty": nonempty,
        "flag": flag,
    }
    metadata = {"help": help, **{k: v for k, v in given.items() if v is not None and v is not False and v != ()}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _device(value: str) -> str | None:
    """None when ``value`` is auto or a device torch parses as cpu/cuda[:N]; else what is expected."""
    if value == "auto":
        return None
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is not None and device.type in ("cpu", "cuda") and (device.type == "cuda" or device.index is None):
        return None
    return "auto, cpu, cuda or cuda:N"


def _env_name(value: str) -> str | None:
    from distillery.core.secrets import env_name_problem

    return env_name_problem(value)


# A string setting's form: a check returning None when the value fits, else what was expected.
FORMS = {"device": _device, "env_name": _env_name}
RANGE_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _out_of_range(f: dataclasses.Field, value) -> str | None:
    """What ``f`` expects when ``value`` is outside its declared range, else None."""
    bounds = {k: f.metadata[k] for k in RANGE_WORDS if k in f.metadata}
    if str(f.type) == "int" and "le" not in bounds and "lt" not in bounds:
        bounds["le"] = INT_MAX
    inside = all({"ge": value >= b, "gt": value > b, "le": value <= b, "lt": value < b}[k] for k, b in bounds.items())
    if inside:
        return None
    return " and ".join(
        f"{RANGE_WORDS[k]} {b:g}" if isinstance(b, float) else f"{RANGE_WORDS[k]} {b}" for k, b in bounds.items()
    )


def check_settings(config) -> None:
    """Check every field of a config dataclass against its declaration: a finite number inside its
    range (``nan <= 0`` is False, so a range check alone lets NaN through), a string of its form,
    a choice among its choices. The first field that does not fit is a one-line :class:`UserError`
    that names it, what it expects and what it found (a value that may be a secret is not shown)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{flag}: expected a finite number, found {value}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            expected = _out_of_range(f, value)
            if expected:
                what = re.split(r";| \(", f.metadata.get("help", ""))[0][:80]
                raise UserError(f"{flag}: expected a number {expected}, found {value:g} ({what})")
        form = f.metadata.get("form")
        if form and isinstance(value, str):
            expected = FORMS[form](value)
            if expected:
                shown = "a value not shown (it may be the key itself)" if form == "env_name" else repr(value)
                raise UserError(f"{flag}: expected {expected}; found {shown}")
        choices = f.metadata.get("choices")
        if choices and isinstance(value, str) and value not in choices:
            raise UserError(f"{flag}: expected one of {', '.join(choices)}, found {_shown(f.name, value)}")


KINDS = {
    "int": "a whole number",
    "float": "a finite number",
    "str": "a string",
    "bool": "true or false",
    "bool | None": "true or false",
    "list[str]": "a list or a comma-separated string",
}
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
        if not isinstance(value, (list, tuple)) or any(
            isinstance(x, (dict, list, tuple, bool)) or x is None for x in value
        ):
            raise wrong()
        value = [str(x).strip() for x in value]
        if not value and f.metadata.get("nonempty"):
            raise UserError(
                f"{key}: expected at least one value, comma-separated; found none (leave it out to keep the default)"
            )
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
        raise UserError(
            f"{flag.lstrip('-')}: expected the student folder (default OUT/student); found '{value}', a student kind: "
            f"pass it as --student-kind {value} (student_kind: in a config file)"
        )
