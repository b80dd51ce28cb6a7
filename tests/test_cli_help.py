"""The command line a person reads: each subcommand's --help within its limit, every flag it shows
read by that subcommand's code, one meaning per setting name, renamed flags that say their new name,
and combinations that cannot work refused."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import runpy
from pathlib import Path
from unittest import mock

import pytest

from distillery import cli as distillery_cli
from distillery.core.options import type_name

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 80  # lines of --help per subcommand, on an 80-column terminal
CORE = ["distillery/core"]
STUDENT = "distillery/student"  # the saved student's runtime, below the stages that use it
# The code each subcommand runs: a flag it shows must be read (as cfg.NAME, or by name) somewhere here.
CODE = {
    "annotate": ["annotate", *CORE],
    "distill": [
        "distill",
        "annotate/local.py",
        "annotate/teacher.py",
        "annotate/calibration.py",
        "annotate/backends.py",
        f"{STUDENT}/kinds.py",
        *CORE,
    ],
    "evaluate": ["evaluation", f"{STUDENT}/card.py", f"{STUDENT}/defer.py", f"{STUDENT}/runtime.py", *CORE],
    "predict": ["serve/predict.py", f"{STUDENT}/runtime.py", f"{STUDENT}/defer.py", "serve/config.py", *CORE],
    "export": ["serve/export.py", f"{STUDENT}/runtime.py", f"{STUDENT}/card.py", "serve/config.py", *CORE],
}
CODE["run"] = CODE["annotate"] + CODE["distill"] + CODE["evaluate"] + ["distillery/pipeline.py"]
CODE["active"] = CODE["run"] + ["active"]
CODE["review"] = ["review", "evaluation/review.py", *CORE]


def _help(command: str, flag: str = "--help") -> str:
    """What ``distillery COMMAND --help`` prints on an 80-column terminal."""
    out = io.StringIO()
    with (
        mock.patch.dict(os.environ, {"COLUMNS": "80"}),
        contextlib.redirect_stdout(out),
        pytest.raises(SystemExit) as exit_,
    ):
        distillery_cli.main([command, flag])
    assert exit_.value.code == 0
    return out.getvalue()


def _names_read(paths: list[str]) -> set[str]:
    """Attribute names read and string constants in the given modules (getattr(cfg, name) loops name
    them as strings)."""
    names: set[str] = set()
    files = [f for p in paths for f in ([ROOT / p] if p.endswith(".py") else sorted((ROOT / p).glob("*.py")))]
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
    return names


@pytest.mark.parametrize("command", list(distillery_cli.STAGES))
def test_help_fits_and_every_flag_shown_is_read_by_that_subcommand(command):
    text = _help(command)
    assert len(text.splitlines()) <= LIMIT, f"distillery {command} --help is {len(text.splitlines())} lines"
    assert "(default: )" not in text and "usage: distillery " + command + " [options]" in text
    full = _help(command, "--help-all")
    flags = [line.split()[0].rstrip(",") for line in full.splitlines() if line.startswith("  --")]
    renamed = {
        f.metadata["flag"]: name for name, f in distillery_cli.stage_fields(command).items() if f.metadata.get("flag")
    }  # --import
    shown = {renamed.get(flag) or flag[2:].replace("-", "_").removeprefix("no_") for flag in flags}
    settings = shown - {"help", "help_all", "config"}
    assert settings <= set(distillery_cli.stage_fields(command)), settings - set(distillery_cli.stage_fields(command))
    unread = sorted(settings - _names_read(CODE[command]))
    assert not unread, f"distillery {command} shows flags its code never reads: {unread}"
    if command in ("annotate", "distill"):
        assert "--dry-run" in text if command == "annotate" else "--dry-run" not in full


def test_every_setting_has_one_group_and_one_short_help_whatever_the_stage():
    """The group and the short help are arguments of option(), beside the setting they describe."""
    fields = {f.name: f for command in distillery_cli.STAGES for f in distillery_cli.stage_fields(command).values()}
    theirs = {f.name for c in distillery_cli.STAGES for *_, members in distillery_cli.entry_groups(c) for f in members}
    for name, f in fields.items():
        assert f.metadata.get("short"), f"{name}: option(..., short=...) is the line --help shows"
        if name not in theirs:  # a backend's or a student kind's own settings are grouped under it
            assert f.metadata.get("group") in distillery_cli.GROUP_TITLES, f"{name}: option(..., group=...)"
    # A name shared by two stages has the same type there (one meaning, so a shared config file is safe).
    types: dict[str, str] = {}
    for command in distillery_cli.STAGES:
        for f in distillery_cli.stage_fields(command).values():
            assert types.setdefault(f.name, type_name(f)) == type_name(f), f.name


@pytest.mark.parametrize(
    "argv, says",
    [
        (["distill", "--output-dir", "x"], "--output-dir was renamed: use --student"),
        (["export", "--output-dir", "x"], "--output-dir was renamed: use --onnx-dir"),
        (["predict", "--data", "x.csv", "--batch-size", "4"], "--batch-size was renamed: use --predict-batch-size"),
        (["predict", "--data", "x.csv", "--overwrite"], "--overwrite was renamed: use --restart-predictions"),
    ],
)
def test_an_old_flag_is_an_error_that_names_the_new_one(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        distillery_cli.main(argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["distill", "--student", "llama-lora"], "pass it as --student-kind llama-lora"),
        (["predict", "--data", "x.csv", "--out", "preds.csv"], "write the predictions with --predictions FILE.csv"),
        (
            ["distill", "--teacher-mode", "online", "--backend", "openai"],
            "teacher_mode online: expected a backend that can score training batches (local); found --backend openai",
        ),
        (
            ["distill", "--teacher-mode", "online", "--learning-curve"],
            "learning_curve: trains on shares of OUT/annotations",
        ),
        (
            ["annotate", "--max-cost", "5"],
            "--max-cost: a setting of the openai teacher backend; found --backend local; leave --max-cost out",
        ),
        (
            ["annotate", "--backend", "openai", "--dtype", "bfloat16"],
            "--dtype: a setting of the local teacher backend; found --backend openai",
        ),
        (
            ["active", "--warm-start", "--student-kind", "llama-lora"],
            "warm_start: applies to a student kind that can start",
        ),
        (["distill", "--qlora"], "--qlora: a setting of the llama-lora student kind; found --student-kind encoder"),
        (
            ["annotate", "--base-url", "http://127.0.0.1:1/v1"],
            "--base-url: a setting of the openai teacher backend; found --backend local",
        ),
        (
            ["annotate", "--backend", "openai", "--load-in-4bit"],
            "--load-in-4bit: a setting of the local teacher backend; found --backend openai",
        ),
        (["predict", "--data", "x.csv", "--defer-threshold", "0.9"], "pass --defer too"),
        (["distill", "--student-kind", "bert-lora"], "--student-kind: expected one of encoder, llama-lora"),
    ],
)
def test_combinations_that_cannot_work_are_one_line_errors(argv, says, capsys, tmp_path):
    assert distillery_cli.main([*argv]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err


def test_a_config_key_that_was_renamed_says_so(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("output_dir: somewhere\n")
    assert distillery_cli.main(["distill", "--config", str(path)]) == 2
    assert "renamed: student (distill's student folder) or onnx_dir" in capsys.readouterr().err


def test_the_usage_reference_in_the_docs_is_the_one_the_code_generates():
    text = (ROOT / "docs" / "usage.md").read_text()
    reference = runpy.run_path(str(ROOT / "docs" / "make_reference.py"))["reference_markdown"]()
    assert text.endswith(reference), "docs/usage.md is stale: run python docs/make_reference.py"
    for command in distillery_cli.STAGES:
        for name, f in distillery_cli.stage_fields(command).items():
            assert f"`{f.metadata.get('flag') or '--' + name.replace('_', '-')}` (`{name}`)" in text


HEAVY = ("torch", "transformers", "accelerate", "peft", "sklearn", "scipy", "ray")


def test_the_parser_help_and_a_settings_error_import_nothing_heavy(tmp_path):
    """Building the parser, every subcommand's --help and refusing a bad setting or config file import
    none of the libraries a stage needs (issue #39: `annotate --help` took 11 s importing them)."""
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("alpha: 2\n")
    script = f"""
import contextlib, io, sys
from distillery import cli
cli.build_parser()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    for argv in ([], *[[c] for c in cli.STAGES]):
        try:
            cli.main([*argv, "--help"])
        except SystemExit:
            pass
    codes = (cli.main(["distill", "--alpha", "2"]), cli.main(["distill", "--config", {str(bad)!r}]))
print(codes, sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "(2, 2) []", done.stdout + done.stderr
    # the installed command itself, as a user runs it: -X importtime lists every module it imported
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "distillery", "annotate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert done.returncode == 0 and "--backend" in done.stdout
    assert "distillery" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_a_stage_function_keeps_its_name_after_its_module_of_that_name_is_imported():
    """``distillery.evaluation.evaluate`` is a function and a module: importing the module first (as a script
    that uses one of its helpers does) must not leave the package's name bound to the module."""
    import subprocess
    import sys

    script = """
import distillery.evaluation.evaluate, distillery.serve.export, distillery.serve.predict
from distillery.evaluation import evaluate
from distillery.serve import export, predict
import distillery
print([type(f).__name__ for f in (evaluate, export, predict, distillery.evaluate, distillery.predict)])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == str(["function"] * 5), done.stdout + done.stderr
