"""How the CLI fails: a user's mistake is one line and exit 2, Ctrl-C one line and 130, a bug in
Distillery its traceback and 1; YAML values are checked against the config dataclasses' types."""

import dataclasses
import math

import pytest

from distillery import cli as distillery_cli
from distillery.active.config import ActiveConfig
from distillery.annotate.config import AnnotateConfig
from distillery.core.errors import UserError
from distillery.distill.config import DistillConfig
from distillery.evaluation.config import EvaluateConfig
from distillery.serve.config import PredictConfig


@pytest.fixture
def no_stage(monkeypatch):
    """A settings error must stop the command before any stage runs (else the test would run one)."""

    def ran(command, configs):
        raise AssertionError(f"{command} ran despite a bad setting")

    monkeypatch.setattr(distillery_cli, "run_stages", ran)


def _errors(capsys) -> tuple[list[str], str]:
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("distillery")], err


@pytest.mark.parametrize(
    "text, command, found",
    [
        ("epochs: three\n", "distill", "epochs: expected a whole number (int), found 'three'"),
        ("limit: ten\n", "annotate", "limit: expected a whole number (int), found 'ten'"),
        ("alpha: half\n", "distill", "alpha: expected a finite number (float), found 'half'"),
        ("temperature: .nan\n", "distill", "temperature: expected a finite number (float), found nan"),
        ("drop_empty: maybe\n", "annotate", "drop_empty: expected true or false (bool), found 'maybe'"),
        ("labels: []\n", "annotate", "labels: expected at least one value"),
        ("backend: opneai\n", "annotate", "backend: expected one of local, openai, found 'opneai'"),
        ("teacher:\n", "annotate", "teacher: expected a string (str); remove the key to keep the default, found None"),
    ],
)
def test_a_wrong_type_in_a_yaml_file_is_one_line_naming_file_key_and_value(
    text, command, found, tmp_path, capsys, no_stage
):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    assert distillery_cli.main([command, "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    lines, err = _errors(capsys)
    assert (
        len(lines) == 1
        and lines[0].startswith(f"distillery {command}: error: {path}: {found}")
        and "Traceback" not in err
    )


def test_unambiguous_yaml_values_are_converted_to_the_fields_types(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(
        "alpha: '0.5'\ntemperature: 3\nepochs: 2.0\nlimit: '5'\nbalance: 'true'\nlabels: 'negative, positive'\n"
        "extra_headers: {api-key: abc}\nhf_config: 2023\nbackend: openai\n"
    )
    values = distillery_cli.resolve(distillery_cli.build_parser().parse_args(["run", "--config", str(path)]))
    assert values == {
        "alpha": 0.5,
        "temperature": 3.0,
        "epochs": 2,
        "limit": 5,
        "balance": True,
        "labels": ["negative", "positive"],
        "extra_headers": ["api-key: abc"],
        "hf_config": "2023",
        "backend": "openai",
    }
    assert type(values["temperature"]) is float and type(values["epochs"]) is int
    annotate, distill, _ = (distillery_cli.build(cls, values) for cls in distillery_cli.stage_configs("run"))
    assert (annotate.limit, annotate.balance, distill.alpha) == (5, True, 0.5)


def test_malformed_yaml_is_one_line_with_the_file_and_the_line(tmp_path, capsys, no_stage):
    path = tmp_path / "broken.yaml"
    path.write_text("epochs: 3\nalpha: [0.5\nlimit: 10\n")
    assert distillery_cli.main(["distill", "--config", str(path)]) == 2
    lines, err = _errors(capsys)
    assert len(lines) == 1 and f"{path}: line 3" in lines[0] and "not valid YAML" in lines[0] and "Traceback" not in err


@pytest.mark.parametrize(
    "flag, value", [("--temperature", "nan"), ("--alpha", "nan"), ("--lr", "inf"), ("--weight-decay", "-inf")]
)
def test_nan_and_infinity_are_refused_on_the_command_line(flag, value, tmp_path, capsys, no_stage):
    assert distillery_cli.main(["distill", f"{flag}={value}", "--out", str(tmp_path)]) == 2
    lines, _ = _errors(capsys)
    assert lines == [f"distillery distill: error: {flag}: expected a finite number (float), found {float(value)}"]


@pytest.mark.parametrize(
    "cls, required",
    [
        (AnnotateConfig, {}),
        (DistillConfig, {}),
        (EvaluateConfig, {}),
        (ActiveConfig, {}),
        (PredictConfig, {"data": "x.csv"}),
    ],
)
def test_every_float_field_refuses_nan_when_a_config_is_built_directly(cls, required):
    floats = [f.name for f in dataclasses.fields(cls) if f.type == "float"]
    assert floats
    for name in floats:
        for bad in (math.nan, math.inf):
            with pytest.raises(UserError, match=f"--{name.replace('_', '-')}: expected a finite number"):
                cls(**required, **{name: bad})


@pytest.mark.parametrize(
    "argv", [["annotate", "--labels", ","], ["evaluate", "--students", " , "], ["distill", "--lora-targets", ","]]
)
def test_an_explicitly_empty_list_is_an_error_not_the_default(argv, tmp_path, capsys, no_stage):
    assert distillery_cli.main([*argv, "--out", str(tmp_path)]) == 2
    lines, _ = _errors(capsys)
    assert len(lines) == 1 and f"{argv[1]}: expected at least one value" in lines[0]


def _failing(monkeypatch, err: BaseException):
    def boom(command, configs):
        raise err

    monkeypatch.setattr(distillery_cli, "run_stages", boom)


def test_a_bug_shows_its_traceback_and_exits_1(monkeypatch, tmp_path, capsys):
    from distillery import annotate

    def broken(cfg):
        return {}["no such key"]  # a bug in our own code

    monkeypatch.setattr(annotate, "annotate", broken)  # run_stages imports the stage function when it runs
    assert distillery_cli.main(["annotate", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'no such key'" in err and "in broken" in err
    assert err.rstrip().splitlines()[-1].startswith("distillery annotate: this is a bug in Distillery")


def test_a_plain_value_error_is_a_bug_too(monkeypatch, capsys):
    _failing(monkeypatch, ValueError("shapes (3,) and (4,) not aligned"))
    assert distillery_cli.main(["export"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    "err, line",
    [
        (UserError("data: expected a file\nsecond line"), "data: expected a file"),
        (
            ImportError("the hosted teacher needs openai: pip install 'distillery[hosted]'"),
            "the hosted teacher needs openai: pip install 'distillery[hosted]'",
        ),
        (PermissionError(13, "Permission denied", "/srv/run/annotations"), "Permission denied: '/srv/run/annotations'"),
        (ConnectionRefusedError("cannot reach the server"), "cannot reach the server"),
    ],
)
def test_a_user_error_is_one_line_without_traceback(err, line, monkeypatch, capsys):
    _failing(monkeypatch, err)
    assert distillery_cli.main(["export"]) == 2
    lines, text = _errors(capsys)
    assert lines == [f"distillery export: error: {line}"] and "Traceback" not in text


def test_an_oserror_names_its_file(monkeypatch, capsys):
    failure = OSError("disk full")
    failure.filename = "/srv/run/student/model.safetensors"
    _failing(monkeypatch, failure)
    assert distillery_cli.main(["export"]) == 2
    assert _errors(capsys)[0] == ["distillery export: error: disk full: '/srv/run/student/model.safetensors'"]


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    _failing(monkeypatch, KeyboardInterrupt())
    assert distillery_cli.main(["annotate"]) == 130
    lines, err = _errors(capsys)
    assert (
        lines == ["distillery annotate: interrupted; rerun the same command to resume: finished work is kept"]
        and "Traceback" not in err
    )


def test_distillery_debug_raises_everything(monkeypatch):
    monkeypatch.setenv("DISTILLERY_DEBUG", "1")
    for err in (KeyError("k"), UserError("u"), KeyboardInterrupt()):
        _failing(monkeypatch, err)
        with pytest.raises(type(err)):
            distillery_cli.main(["export"])
