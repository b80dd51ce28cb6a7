"""Every setting of every command is checked against its declaration (issue #26): a number outside its
declared range, a string outside its form or choices, a bool that is not one, an explicitly empty
list: one line naming the flag, exit 2, before any stage runs. The test enumerates the fields of the
config dataclasses, so a setting added later without a declared range fails here."""

from __future__ import annotations

import dataclasses
import re

import pytest

from distillery import cli as distillery_cli
from distillery.core.errors import UserError
from distillery.core.options import INT_MAX, RANGE_WORDS, option, type_name

# Each config class, the command that builds it first, and the flags that command needs besides.
CONFIGS = {
    cls: command
    for command in ("annotate", "distill", "evaluate", "predict", "export", "active", "review")
    for cls in distillery_cli.stage_configs(command)[:1]
}
NEEDS = {"predict": ["--data", "rows.csv"]}
# Strings that name a file, folder, model, column or dataset: any text is a name (their existence is
# checked where they are read). A new string setting must declare a form or choices, or be listed here.
FREE_FORM = {
    "out",
    "data",
    "hf_config",
    "split",
    "text_column",
    "label_column",
    "split_column",
    "id_column",
    "task",
    "teacher",
    "base_url",
    "template_from",
    "annotations",
    "student",
    "student_model",
    "predictions",
    "onnx_dir",
    "import_file",
    "push_to_hub",
}
KEY = "abcdef0123456789abcdef0123456789"


def outside(f: dataclasses.Field) -> list:
    """Values just outside ``f``'s declaration (the test's own reading of it)."""
    kind, meta = type_name(f), f.metadata
    if kind in ("int", "float"):
        step = 1 if kind == "int" else 0.5
        low = (
            [min(meta["ge"], f.default) - step] if "ge" in meta else [meta["gt"]]
        )  # below a sentinel default too (limit -1)
        high = (
            [meta["le"] + step]
            if "le" in meta
            else [meta["lt"]]
            if "lt" in meta
            else [INT_MAX + 1]
            if kind == "int"
            else []
        )
        return low + high
    if kind.startswith("bool"):
        return ["maybe"]
    if kind.startswith("list"):
        return [","] if meta.get("nonempty") else ["no-colon-here"] if f.name == "extra_headers" else []
    if meta.get("form") == "device":
        return ["foo", "cuda:x", "cpu:1"]
    if meta.get("form") == "env_name":
        return [KEY, "1ABC", "sk-abcdefghijklmnopqrstuv"]
    return ["no-such-choice"] if meta.get("choices") or meta.get("registry") is not None else []


# (owner, command, the flags it needs besides, field): every config's fields, and every registered
# backend's and student kind's own settings, chosen with its flag.
FIELDS = [
    (cls.__name__, command, NEEDS.get(command, []), f)
    for cls, command in CONFIGS.items()
    for f in dataclasses.fields(cls)
    if "entry_settings" not in f.metadata
] + [
    (f"{registry.axis} {name}", command, [registry.flag, name], f)
    for command in ("annotate", "distill")
    for _, registry, name, fields in distillery_cli.entry_groups(command)
    for f in fields
    if command == "annotate" or registry.axis == "student kind"
]


@pytest.mark.parametrize("owner, command, needs, f", FIELDS, ids=[f"{o}.{f.name}" for o, _, _, f in FIELDS])
def test_every_setting_declares_what_it_accepts(owner, command, needs, f):
    kind = type_name(f)
    if kind in ("int", "float"):
        assert "ge" in f.metadata or "gt" in f.metadata, (
            f"{f.name}: a number must declare its lowest value (option(..., ge=0))"
        )
    elif kind == "str":
        assert (
            f.metadata.get("form")
            or f.metadata.get("choices")
            or f.metadata.get("registry") is not None
            or f.name in FREE_FORM
        ), f"{f.name}: declare form= or choices=, or add it to FREE_FORM with the reason"


CASES = [(owner, command, needs, f, value) for owner, command, needs, f in FIELDS for value in outside(f)]


@pytest.mark.parametrize("owner, command, needs, f, value", CASES, ids=[f"{o}.{f.name}={v}" for o, _, _, f, v in CASES])
def test_a_value_outside_a_settings_declaration_is_one_line_and_exit_2(
    owner, command, needs, f, value, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(
        distillery_cli, "run_stages", lambda command, configs: pytest.fail(f"{command} ran with {f.name}={value}")
    )
    monkeypatch.chdir(tmp_path)
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    if type_name(f).startswith("bool"):  # a bool is a switch on the command line: its values come from a YAML file
        (tmp_path / "my.yaml").write_text(f"{f.name}: {value}\n")
        assert distillery_cli.main([command, *needs, "--config", "my.yaml"]) == 2
    else:
        assert distillery_cli.main([command, *needs, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"distillery {command}: error: ") and (flag in lines[0] or f.name in lines[0]), lines[0]
    if f.metadata.get("form") == "env_name":
        assert value not in err  # a key pasted into the wrong flag is never shown


@pytest.mark.parametrize(
    ("word", "bound", "inside", "outside"),
    [("ge", 0.0, 0.0, -1.0), ("gt", 0.0, 1.0, 0.0), ("le", 1.0, 1.0, 2.0), ("lt", 1.0, 0.0, 1.0)],
)
def test_each_range_word_bounds_its_field_as_it_says(word, bound, inside, outside):
    """Each of option()'s range words is enforced with the comparison it names; a typo in a bound's name
    (``gte=0``) is refused rather than silently unread."""
    import dataclasses

    from distillery.core.options import check_settings

    @dataclasses.dataclass
    class Settings:
        x: float = option(inside, "a number", **{word: bound})

        def __post_init__(self):
            check_settings(self)

    assert Settings(inside).x == inside
    with pytest.raises(
        UserError, match=f"--x: expected a number {re.escape(RANGE_WORDS[word])} {bound:g}, found {outside:g} "
    ):
        Settings(outside)
    with pytest.raises(TypeError):
        option(0, "x", gte=0)


@pytest.mark.parametrize(
    "argv",
    [
        ["distill", "--seed", "4294967295", "--device", "cuda:1", "--warmup-ratio", "0.99"],
        ["annotate", "--backend", "openai", "--api-key-env", "MY_SERVER_KEY_2", "--limit", "0"],
        ["annotate", "--backend", "openai", "--api-key-env", "none"],
    ],
)
def test_values_inside_their_declarations_are_accepted(argv, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(distillery_cli, "run_stages", lambda command, configs: ran.append(configs))
    monkeypatch.chdir(tmp_path)
    assert distillery_cli.main(argv) == 0 and len(ran) == 1
    # the stage receives the values as given, each in its own setting
    settings = {k: v for cfg in ran[0] for k, v in cfg.flat().items()}
    given = dict(zip(argv[1::2], argv[2::2]))
    for flag, value in given.items():
        name = flag.removeprefix("--").replace("-", "_")
        assert str(settings[name]) == value or settings[name] == type(settings[name])(value), (name, settings[name])
