"""Settings as typed dataclass fields: the ``option()`` helper every stage's config uses, the finite-number
check, and the conversion of YAML values and flags to a field's type."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import field
from pathlib import Path

import yaml

from distillery.core.errors import UserError, excerpt
from distillery.core.registry import student_kinds
from distillery.core.secrets import scrub

__all__ = [
    "option",
    "check_settings",
    "coerce",
    "read_config",
    "student_folder",
    "check_student_folder",
    "FORMS",
    "settings_field",
    "settings_of",
    "entry_settings",
    "flat_settings",
    "split_settings",
]

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
    short: str | None = None,
    group: str | None = None,
    metavar: str | None = None,
    shown: str | None = None,
    online: bool | str = False,
    answers: bool = False,
    rows: str | None = None,
):
    """A dataclass field: one setting, everything about it in one place.

    Args:
        default: the value when neither a flag nor a config file sets it.
        help: the whole help text (``--help-all``, docs/usage.md).
        short: the one line ``--help`` shows (default: ``help`` up to its first ';' or '(').
        group: the ``--help`` group it is listed in (a key of ``distillery.cli.GROUP_TITLES``); a
            backend's or a student kind's own settings are grouped under it instead.
        ge, gt, le, lt: the range of a number (>=, >, <=, <). Every int field has one: an int
            without ``le``/``lt`` is bounded by ``INT_MAX``, and one without ``ge``/``gt`` must
            declare it (tests/test_settings.py enumerates every field).
        form: the shape of a string, a key of :data:`FORMS` (``device``, ``env_name``).
        choices, registry, extra_choices, nonempty: the values a string or list accepts, as :func:`coerce` reads them.
        flag: the flag's spelling where it is not ``--name`` (``--import``).
        metavar: the value's name in ``--help`` (``DIR``, ``FILE``; default by type: N, X, VALUE, A,B).
        shown: where ``--help`` lists it besides ``--help-all``: None, in its own subcommand's ``--help``;
            ``common``, also in ``run --help`` and ``active --help``; ``rare``, in ``--help-all`` only.
        online: an annotate setting that distill reads under ``--teacher-mode online`` (the rows and the
            teacher); ``"shown"``: one that ``distill --help`` lists (the rest: ``--help-all``).
        answers: an annotate setting that changes what the teacher answers: a resumed online distill
            refuses a checkpoint whose teacher had another value (a backend's own settings count unless
            its settings class lists them in ``SAME_ANSWERS``).
        rows: an annotate setting that selects the rows or their split, so an annotation run's
            fingerprint records it: ``"always"``, or ``"when set"`` (recorded only when not its default,
            so runs from before the setting existed still resume).
    """
    if shown not in (None, "common", "rare"):
        raise TypeError(f"option(shown=): expected None, 'common' or 'rare'; found {shown!r}")
    if rows not in (None, "always", "when set"):
        raise TypeError(f"option(rows=): expected None, 'always' or 'when set'; found {rows!r}")
    given = dict(ge=ge, gt=gt, le=le, lt=lt, form=form, choices=choices, registry=registry)
    given |= dict(extra_choices=extra_choices, nonempty=nonempty, flag=flag, short=short, group=group)
    given |= dict(metavar=metavar, shown=shown, online=online, answers=answers, rows=rows)
    metadata = {"help": help, **{k: v for k, v in given.items() if v is not None and v is not False and v != ()}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(f: dataclasses.Field):
    """A setting's default value (a fresh one for a list or dict setting)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def type_name(f: dataclasses.Field) -> str:
    """A field's type as written ("int", "list[str]", "bool | None"), with or without
    ``from __future__ import annotations``."""
    return f.type if isinstance(f.type, str) else f.type.__name__ if isinstance(f.type, type) else str(f.type)


def short_help(f: dataclasses.Field) -> str:
    """The one line ``--help`` shows for a setting."""
    return f.metadata.get("short") or re.split(r";| \(", f.metadata.get("help", ""))[0][:48]


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


def _ray_address(value: str) -> str | None:
    """None for '' (a Ray runtime started here), auto, ray://HOST:PORT or HOST:PORT; else what is expected."""
    if value in ("", "auto") or re.fullmatch(r"(ray://)?[\w.\-\[\]:]+:\d+", value):
        return None
    return "'' (start Ray here), auto, ray://HOST:PORT or HOST:PORT"


def _any(value: str) -> str | None:
    return None


BUILT_IN_DATA = ("tweets",)  # --data values that name no file: the built-in sets (and hf:NAME)


def absolute_path(value: str) -> str:
    """A path as every stage reads it: ``~`` expanded, made absolute ('' stays: "the default")."""
    return os.path.abspath(os.path.expanduser(value)) if value else value


def _normalised(form: str, value):
    """A ``path`` (or ``data``: a path unless a built-in set or hf:NAME) resolved once, flags and YAML alike."""
    if isinstance(value, list):
        return [_normalised(form, v) for v in value]
    if not isinstance(value, str) or (form == "data" and (value in BUILT_IN_DATA or value.startswith("hf:"))):
        return value
    return absolute_path(value)


# A string setting's form: a check returning None when the value fits, else what was expected. ``path``
# and ``data`` also normalise the value (:func:`absolute_path`) where check_settings runs: in every
# config's __post_init__, so a flag, a YAML key and the Python API resolve a path the same way.
FORMS = {"device": _device, "env_name": _env_name, "ray_address": _ray_address, "path": _any, "data": _any}
PATH_FORMS = ("path", "data")
RANGE_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _out_of_range(f: dataclasses.Field, value) -> str | None:
    """What ``f`` expects when ``value`` is outside its declared range, else None."""
    bounds = {k: f.metadata[k] for k in RANGE_WORDS if k in f.metadata}
    if type_name(f) == "int" and "le" not in bounds and "lt" not in bounds:
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
        if f.metadata.get("form") in PATH_FORMS:
            if any("\0" in v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)):
                raise UserError(f"{flag}: expected a path; found one holding a NUL character ({excerpt(value)})")
            value = _normalised(f.metadata["form"], value)
            object.__setattr__(config, f.name, value)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{flag}: expected a finite number, found {value}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            expected = _out_of_range(f, value)
            if expected:
                shown = f"{value:g}" if abs(value) < 1e300 else excerpt(value)  # an int too large to format as a float
                raise UserError(f"{flag}: expected a number {expected}, found {shown} ({short_help(f)})")
        form = f.metadata.get("form")
        if form and isinstance(value, str):
            expected = FORMS[form](value)
            if expected:
                shown = "a value not shown (it may be the key itself)" if form == "env_name" else excerpt(value)
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
    return scrub(excerpt(value))


def coerce(f: dataclasses.Field, value, where: str | None = None):
    """A YAML value or a flag as its field's type, converting only what is unambiguous.

    ``'0.5'`` or ``1`` for a float, ``'3'`` for an int, ``'true'``/``'false'`` for a bool, a
    comma-separated string for a list (``extra_headers`` also takes a ``{Name: value}`` mapping);
    NaN and infinity are refused, so is an explicitly empty list where an empty one would
    silently mean the default (``--labels ','``). Anything else is a :class:`UserError` of one
    line: where (the file; None for a flag), key, value, expected type.
    """
    kind, name = type_name(f), f.name
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
            try:
                return int(value.strip())
            except ValueError:  # more digits than Python converts (4300): no setting takes such a number
                raise wrong() from None
        raise wrong()
    if kind == "float":
        if isinstance(value, bool):
            raise wrong()
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise wrong() from None
        try:
            value = float(value) if isinstance(value, (int, float)) else None
        except OverflowError:  # an int too large for a float
            raise wrong() from None
        if value is None or not math.isfinite(value):
            raise wrong()
        return value
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
        text = path.read_text(encoding="utf-8")
        alias = next((e for e in yaml.parse(text, Loader=yaml.SafeLoader) if isinstance(e, yaml.AliasEvent)), None)
        if alias is not None:  # a few hundred bytes of nested aliases expand to gigabytes
            line = alias.start_mark.line + 1
            raise UserError(
                f"{path}: line {line}: YAML aliases (*{excerpt(alias.anchor, 20)}) are not read in a config; "
                "expected flat 'setting: value' lines: write the value out"
            )
        values = yaml.safe_load(text) or {}
    except UnicodeDecodeError:
        raise UserError(f"{path}: expected a UTF-8 YAML file; found other bytes") from None
    except UserError:
        raise
    except ValueError as err:  # a number YAML cannot convert (an int of more than 4300 digits)
        raise UserError(
            f"{path}: a value YAML cannot read ({excerpt(str(err), 80)}); expected flat 'setting: value' lines"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: {where}not valid YAML ({problem}); expected flat 'setting: value' lines") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of setting: value; found {type(values).__name__}")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise UserError(f"{path}: expected setting names as keys; found {excerpt(bad)}")
    return {k.replace("-", "_"): v for k, v in values.items()}


def student_folder(cfg) -> Path:
    """The student folder a config names: ``--student``, else ``OUT/student`` (``--out`` is the run folder)."""
    return Path(cfg.student or f"{cfg.out}/student")


def check_student_folder(value: str, flag: str) -> None:
    """``--student`` is a folder in every command; a student kind's name there (the old meaning in
    distill: ``--student llama-lora``) is an error naming the flag that took it over."""
    name = Path(value).name  # the value may be resolved already (cwd/llama-lora)
    if name in student_kinds and value in (name, absolute_path(name)) and not Path(value).is_dir():
        raise UserError(
            f"{flag.lstrip('-')}: expected the student folder (default OUT/student); found '{name}', a student kind: "
            f"pass it as --student-kind {name} (student_kind: in a config file)"
        )


# A registry entry's own settings (a teacher backend's, a student kind's): a dataclass of ``option()``
# fields that the entry names as its ``settings`` attribute. The stage config holds the chosen entry's
# instance in its ``settings`` field; users still write flat flags and YAML keys.


@dataclasses.dataclass
class NoSettings:
    """The settings of an entry that declares none."""


def settings_of(registry, name: str) -> type:
    """The settings dataclass the entry ``name`` declares (:class:`NoSettings` when it declares none)."""
    return getattr(registry.get(name), "settings", None) or NoSettings


def settings_field(registry):
    """The ``settings`` field of a stage config: the chosen entry of ``registry``'s own settings."""
    return field(
        default_factory=dict, metadata={"help": f"the {registry.axis}'s own settings", "entry_settings": registry}
    )


def owners(registry, key: str) -> list[str]:
    """The entries of ``registry`` that declare the setting ``key``."""
    return [n for n in registry.names() if key in {f.name for f in dataclasses.fields(settings_of(registry, n))}]


def entry_settings(registry, name: str, given):
    """``given`` (a mapping of flat keys, or the dataclass itself) as the settings of entry ``name``.

    A key the entry does not declare is a one-line :class:`UserError` naming the entry it belongs to."""
    cls = settings_of(registry, name)  # an unknown name: one line naming the registered ones
    if isinstance(given, cls):
        return given
    if dataclasses.is_dataclass(given):  # another entry's, e.g. dataclasses.replace(cfg, backend=...): what was set
        unset = type(given)()
        given = {
            f.name: getattr(given, f.name)
            for f in dataclasses.fields(given)
            if getattr(given, f.name) != getattr(unset, f.name)
        }
    own = {f.name for f in dataclasses.fields(cls)}
    for key in given:
        if key in own:
            continue
        flag, axis = "--" + key.replace("_", "-"), registry.flag
        belongs = owners(registry, key)
        if belongs:
            raise UserError(
                f"{flag}: a setting of the {' and '.join(belongs)} {registry.axis}; found {axis} {name}; "
                f"leave {flag} out, or pass {axis} {belongs[0]}"
            )
        raise UserError(
            f"{key}: not a setting of Distillery's or of any {registry.axis}; see 'distillery SUBCOMMAND --help-all'"
        )
    return cls(**given)


def flat_settings(config) -> dict:
    """A stage config as one flat mapping: its own fields, then its ``settings`` dataclass's."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "entry_settings" in f.metadata:
            out.update(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value))
        else:
            out[f.name] = value
    return out


def split_settings(cls, registry, values: dict, name: str | None) -> dict:
    """Flat ``values`` as ``cls``'s keyword arguments: its own fields, and the registry entries' settings
    under ``settings``. ``name``: keep only that entry's settings (other keys are left out); None:
    keep every key, so that one the chosen entry does not declare is an error where it is built."""
    own = {f.name for f in dataclasses.fields(cls)}
    theirs = (
        {f.name for f in dataclasses.fields(settings_of(registry, name))} if name is not None else set(values) - own
    )
    kwargs = {k: v for k, v in values.items() if k in own and k != "settings"}
    kwargs["settings"] = {k: v for k, v in values.items() if k in theirs}
    return kwargs
