"""Issue #37 (Trust 3), the run folder and the settings: a refused run claims nothing, Distillery's
own names are never followed through a link, a folder it made owns only what it listed, paths are
resolved once, a plugin never ends a command, a message never prints an unbounded value, and a
full disk is one line whichever library noticed it. Each test enumerates the family."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_rows

from distillery import cli as distillery_cli
from distillery.core.errors import UserError, full_disk
from distillery.core.lock import LOCK_FILE, locked
from distillery.core.options import PATH_FORMS, read_config
from distillery.core.registry import _load
from distillery.core.reserved import LinkedName
from distillery.core.rundir import (
    OWNED_FILE,
    ForeignFiles,
    foreign,
    make_folder,
    owned,
    remove_owned,
    seal_folder,
    temporary_name,
    write_text,
)
from distillery.evaluation.config import EvaluateConfig
from distillery.evaluation.evaluate import check_report_writable


def _claims_only_what_exists(root: Path) -> None:
    """Every ownership record under ``root`` lists only files that are there."""
    for marker in root.rglob(OWNED_FILE):
        listed = json.loads(marker.read_text()).get("files", [])
        absent = [name for name in listed if not (marker.parent / name).exists()]
        assert not absent, f"{marker} claims {absent}, which are not there"


# --- 1: ownership recorded only once a file is whole -------------------------------------------------

REFUSED = {  # every stage, refused for want of its input, before it writes anything
    "annotate": ["annotate", "--data", "{tmp}/missing.csv"],
    "distill": ["distill", "--student-model", "{tmp}/missing-model"],
    "evaluate": ["evaluate"],
    "review": ["review"],
    "export": ["export"],
    "predict": ["predict", "--data", "{tmp}/missing.csv", "--predictions", "{out}/predictions.csv"],
}


@pytest.mark.parametrize("stage", sorted(REFUSED))
def test_every_stage_refused_before_it_writes_claims_nothing(stage, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    argv = [a.format(tmp=tmp_path, out=out) for a in REFUSED[stage]] + ["--out", str(out)]
    assert distillery_cli.main(argv) == 2, capsys.readouterr()
    _claims_only_what_exists(tmp_path)
    # The user's own files by the stage's names, written after the refusal, stay theirs.
    for name in ("report.md", "metrics.json", "coverage.png", "evaluate_config.yaml"):
        (out / name).write_text("mine")
    assert owned(out) == set()
    with pytest.raises(ForeignFiles, match="report.md"):
        check_report_writable(EvaluateConfig(out=str(out)))
    assert (out / "report.md").read_text() == "mine"


def test_a_plot_is_claimed_only_once_written_whole(tmp_path):
    from evaluation.report import plot_confusion

    plot_confusion([[1, 2], [3, 4]], ["a", "b"], "t", "gold", "student", tmp_path / "c.png")
    assert owned(tmp_path) == {"c.png"} and (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "d.png").write_text("a user's picture")
    with pytest.raises(ForeignFiles, match="d.png"):
        plot_confusion([[1]], ["a"], "t", "gold", "student", tmp_path / "d.png")
    assert (tmp_path / "d.png").read_text() == "a user's picture" and owned(tmp_path) == {"c.png"}


# --- 2: reserved names are never followed ------------------------------------------------------------


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("export PATH=...\n")
    return victim


def _reserved_uses(folder: Path) -> dict:
    """Each of Distillery's own names in a run folder, and the operation that opens it."""

    def lock():
        with locked(folder, "evaluate"):
            pass

    return {
        LOCK_FILE: lock,
        OWNED_FILE: lambda: write_text(folder / "report.md", "x"),  # reads, then rewrites, the record
        temporary_name("report.md"): lambda: write_text(folder / "report.md", "x"),
        "request_cache.sqlite": lambda: __import__("distillery.annotate.request_cache", fromlist=["x"]).RequestCache(
            folder / "request_cache.sqlite"
        ),
    }


@pytest.mark.parametrize("name", [LOCK_FILE, OWNED_FILE, temporary_name("report.md"), "request_cache.sqlite"])
@pytest.mark.parametrize("kind", ["link", "dangling link", "fifo", "folder"])
def test_every_reserved_name_as_a_link_or_special_file_stops_with_one_line(name, kind, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    victim = _victim(tmp_path)
    planted = folder / name
    if kind == "link":
        planted.symlink_to(victim)
    elif kind == "dangling link":
        planted.symlink_to(tmp_path / "home" / "new-file")
    elif kind == "fifo":
        os.mkfifo(planted)
    else:
        planted.mkdir()
    started = time.monotonic()
    with pytest.raises(LinkedName) as caught:
        _reserved_uses(folder)[name]()
    assert time.monotonic() - started < 10  # a FIFO never blocks the stage
    assert isinstance(caught.value, UserError) and str(planted) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert victim.read_text() == "export PATH=...\n"
    assert not (tmp_path / "home" / "new-file").exists()
    assert planted.is_symlink() or planted.exists()  # left as it was, for the user to look at


# --- 3: a made folder owns only what it listed once complete -----------------------------------------


def test_a_sealed_folder_keeps_a_file_a_user_saves_into_it(tmp_path):
    made = make_folder(tmp_path / "checkpoint")
    (made / "model.safetensors").write_bytes(b"weights")
    (made / "sub").mkdir()
    (made / "sub" / "optimizer.bin").write_bytes(b"state")
    assert foreign(made) == []  # while it is being filled, all of it is Distillery's
    seal_folder(made)
    (made / "notes.txt").write_text("the user's")
    (made / "sub" / "mine.txt").write_text("the user's")
    assert foreign(made) == ["notes.txt", "sub/mine.txt"]
    remove_owned(made)
    assert sorted(str(p.relative_to(made)) for p in made.rglob("*") if p.name != OWNED_FILE) == [
        "notes.txt",
        "sub",
        "sub/mine.txt",
    ]


def test_distill_resume_never_deletes_a_file_saved_into_the_checkpoint(tmp_path, tiny_llama, tiny_roberta, monkeypatch):
    from test_faults_distill import _annotate_cfg, _distill_cfg, _stop_after_first_checkpoint

    from distillery.annotate import annotate
    from distillery.distill import distill

    rows = tmp_path / "rows.csv"
    make_rows(64).to_csv(rows, index=False)
    out, student = tmp_path / "run", tmp_path / "student"
    annotate(_annotate_cfg(rows, tiny_llama, out))
    _stop_after_first_checkpoint(monkeypatch, lambda: distill(_distill_cfg(out, tiny_roberta, student)))
    notes = student / "checkpoint" / "notes.txt"
    notes.write_text("why this run stopped")
    with pytest.raises(ForeignFiles, match="checkpoint/notes.txt"):
        distill(_distill_cfg(out, tiny_roberta, student, resume=True))
    assert notes.read_text() == "why this run stopped"


def test_a_leftover_at_a_temporary_name_is_cleared_only_when_it_is_distillerys(tmp_path):
    from distillery.core.rundir import remove_leftovers

    folder = tmp_path / "run"
    folder.mkdir()
    victim = _victim(tmp_path)
    ours_file = folder / ".part-00000.csv.distillery-tmp4242"
    ours_file.write_text("a killed write")
    staged = make_folder(folder / ".student.distillery-tmp4242")
    (staged / "model.safetensors").write_bytes(b"w")
    (folder / ".empty.distillery-tmp4242").mkdir()
    killed_before_its_record = folder / ".checkpoint.new.distillery-tmp4242"  # make_folder killed mid-record
    killed_before_its_record.mkdir()
    (killed_before_its_record / temporary_name(OWNED_FILE)).write_text('{"files": [], "ma')
    remove_leftovers(folder)
    assert sorted(p.name for p in folder.iterdir()) == []
    cases = {  # what a user or another process left at such a name: never deleted, never followed
        "folder of a user's": lambda p: (p.mkdir(), (p / "mine.txt").write_text("mine")),
        "link": lambda p: p.symlink_to(victim),
        "link to a folder": lambda p: p.symlink_to(victim.parent, target_is_directory=True),
        "fifo": lambda p: os.mkfifo(p),
    }
    for what, plant in cases.items():
        planted = folder / ".manifest.json.distillery-tmp4242"
        plant(planted)
        with pytest.raises(LinkedName, match=str(planted)):
            remove_leftovers(folder)
        assert (planted.is_symlink() or planted.exists()) and victim.read_text() == "export PATH=...\n", what
        shutil.rmtree(planted) if planted.is_dir() and not planted.is_symlink() else planted.unlink()
    staging = folder / temporary_name("student")  # make_folder's own staging name, planted as a link
    staging.symlink_to(victim.parent, target_is_directory=True)
    with pytest.raises(LinkedName, match="symbolic link"):
        make_folder(folder / "student")
    assert victim.read_text() == "export PATH=...\n"


def test_a_checkpoint_a_kill_left_unsealed_keeps_a_users_file(tmp_path, tiny_llama, tiny_roberta, monkeypatch):
    from test_faults_distill import _annotate_cfg, _distill_cfg, _stop_after_first_checkpoint

    import distillery.distill.checkpoint as checkpoint_mod
    from distillery.annotate import annotate
    from distillery.distill import distill

    rows = tmp_path / "rows.csv"
    make_rows(64).to_csv(rows, index=False)
    out, student = tmp_path / "run", tmp_path / "student"
    annotate(_annotate_cfg(rows, tiny_llama, out))
    unlisted = []  # what a real save_state wrote that the checkpoint's expected names miss
    real_seal = checkpoint_mod.seal_folder
    monkeypatch.setattr(checkpoint_mod, "seal_folder", lambda p: (unlisted.extend(foreign(p)), real_seal(p)))
    _stop_after_first_checkpoint(monkeypatch, lambda: distill(_distill_cfg(out, tiny_roberta, student)))
    assert unlisted == []
    # As a kill in the middle of the next save leaves it: checkpoint.new made, half written, unsealed.
    fresh = make_folder(student / "checkpoint.new", expect=checkpoint_mod.CHECKPOINT_FILES)
    (fresh / "optimizer.bin").write_bytes(b"half")
    (fresh / "notes.txt").write_text("why this run stopped")
    assert foreign(fresh) == ["notes.txt"]
    with pytest.raises(ForeignFiles, match="checkpoint.new/notes.txt"):
        distill(_distill_cfg(out, tiny_roberta, student, resume=True))
    remove_owned(fresh)  # what a resume would clear there: the library's files, never the user's
    assert sorted(p.name for p in fresh.iterdir() if p.name != OWNED_FILE) == ["notes.txt"]


HUGE = "9" * 5000


@pytest.mark.parametrize(
    "argv",
    [
        ["--epochs", HUGE],
        ["--epochs", HUGE[:4000]],
        ["--batch-size", "-" + HUGE[:4000]],
        ["--lr", HUGE[:4000]],
        ["--alpha", HUGE],
    ],
    ids=["int past 4300 digits", "int past a float", "negative int past a float", "float from a huge int", "float"],
)
def test_a_huge_number_in_a_flag_is_one_bounded_line(argv, tmp_path, capsys):
    assert distillery_cli.main(["distill", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and len(err) < 400 and "Traceback" not in err, err[:400]


@pytest.mark.parametrize(
    "yaml_text",
    [f"lr: {'9' * 100_000}\n", f"lr: {HUGE[:4000]}\n", 'out: "/tmp/r\\0y"\n', 'students: ["a", "b\\0"]\n'],
    ids=["int YAML cannot read", "int past a float", "NUL in a path", "NUL in a list of paths"],
)
def test_a_huge_number_or_a_nul_in_a_config_is_one_bounded_line(yaml_text, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    command = "evaluate" if "students" in yaml_text else "distill"
    assert distillery_cli.main([command, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and len(err) < 400 and "Traceback" not in err, err[:400]


# --- 6: paths resolved once, flags and YAML alike ----------------------------------------------------


def _path_fields():
    """Every setting of every stage declared as a path, with its config class."""
    seen = {}
    for command in distillery_cli.STAGES:
        for cls in distillery_cli.stage_configs(command):
            for f in dataclasses.fields(cls):
                if f.metadata.get("form") in PATH_FORMS:
                    seen[(cls.__name__, f.name)] = (cls, f)
    return list(seen.values())


def test_every_path_setting_expands_home_and_is_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    fields = _path_fields()
    names = {f.name for _, f in fields}
    assert {"out", "annotations", "student", "data", "students", "import_file", "predictions", "onnx_dir"} <= names
    needs = {"PredictConfig": {"data": "rows.csv"}}  # what a config cannot be built without
    for cls, f in fields:
        value = ["~/runs/x"] if f.type in ("list[str]", list[str]) else "~/runs/x"
        got = getattr(cls(**{**needs.get(cls.__name__, {}), f.name: value}), f.name)
        assert got in (str(tmp_path / "home" / "runs" / "x"), [str(tmp_path / "home" / "runs" / "x")]), (cls, f.name)
        value = ["rel/x"] if isinstance(value, list) else "rel/x"
        got = getattr(cls(**{**needs.get(cls.__name__, {}), f.name: value}), f.name)
        assert got in (str(tmp_path / "rel" / "x"), [str(tmp_path / "rel" / "x")]), (cls, f.name)


def test_a_yaml_path_with_home_is_the_same_folder_as_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("out: ~/runs/x\ndata: ~/data/rows.csv\n")
    args = distillery_cli.build_parser().parse_args(["annotate", "--config", str(tmp_path / "c.yaml")])
    (cfg,) = [distillery_cli.build(c, distillery_cli.resolve(args)) for c in distillery_cli.stage_configs("annotate")]
    assert cfg.out == str(tmp_path / "home" / "runs" / "x") and cfg.data == str(tmp_path / "home" / "data" / "rows.csv")
    assert not (tmp_path / "~").exists()
    built_in = [distillery_cli.build(c, {"data": "tweets"}) for c in distillery_cli.stage_configs("annotate")]
    assert built_in[0].data == "tweets"  # a built-in set and hf:NAME are not paths


# --- 9: a plugin never ends a command ----------------------------------------------------------------


@pytest.mark.parametrize("ending", ["sys.exit(0)", "sys.exit(3)", "raise SystemExit", "os._exit(0)"])
def test_a_plugin_that_exits_at_load_fails_the_command_in_one_line(ending, tmp_path):
    site = tmp_path / "site"
    (site / "exitplug").mkdir(parents=True)
    (site / "exitplug" / "__init__.py").write_text(f"import os, sys\n{ending}\n")
    info = site / "exitplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: exitplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[distillery.plugins]\nexitplug = exitplug\n")
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "distillery", "evaluate", "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ending == "os._exit(0)":  # nothing in Python can catch it; the command must not look finished
        assert "finished" not in done.stdout
        return
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    line = done.stderr.strip()
    assert line.count("\n") == 0 and "plugin 'exitplug' (package exitplug) failed to load: SystemExit" in line
    assert not (tmp_path / "run").exists()


def test_the_loader_treats_every_exit_as_the_plugins_failure_but_lets_ctrl_c_through():
    for raised in (SystemExit(0), SystemExit("bye"), GeneratorExit(), RuntimeError("x" * 10_000)):

        def load(raised=raised):
            raise raised

        with pytest.raises(UserError, match="plugin 'p' \\(package d\\) failed to load") as caught:
            _load("p", "d", load)
        assert len(str(caught.value)) < 400

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _load("p", "d", interrupted)


# --- 13: messages show a bounded excerpt; YAML aliases are refused -----------------------------------

BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


@pytest.mark.parametrize("key", ["labels", "teacher", "out", "lr"])
def test_a_yaml_alias_bomb_in_any_setting_is_one_short_line(key, tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB.replace("g: &g", f"{key}:"))
    started = time.monotonic()
    with pytest.raises(UserError, match="YAML aliases") as caught:
        read_config(config)
    assert time.monotonic() - started < 5 and len(str(caught.value)) < 300
    rc = distillery_cli.main(["annotate", "--config", str(config), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err) < 400 and "YAML aliases" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "value", [{"k" * 100: ["v" * 10_000] * 1_000}, ["x" * 1_000_000], "y" * 5_000_000, [[[[["deep"]]]]] * 10_000]
)
def test_a_huge_value_of_the_wrong_type_is_shown_as_a_bounded_excerpt(value, tmp_path, capsys):
    config = tmp_path / "big.yaml"
    config.write_text(json.dumps({"lr": value, "out": str(tmp_path / "run")}))  # JSON is YAML
    started = time.monotonic()
    assert distillery_cli.main(["distill", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - started < 20 and len(err) < 400 and "lr" in err, err[:400]


# --- 15: a full disk is one line, whichever library noticed it ---------------------------------------


@pytest.fixture
def full_dir(tmp_path):
    """A folder on a 64 KiB tmpfs that is already full: every write there fails with ENOSPC, as on a
    full disk (mounting needs root, as CI and the developers' machines are; skipped elsewhere)."""
    where = tmp_path / "full"
    where.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True, timeout=30
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("needs root to mount a 64 KiB tmpfs (a disk that is full)")
    try:
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def test_every_librarys_full_disk_error_is_recognised(full_dir):
    import pandas as pd
    from safetensors.torch import save_file

    writes = {
        "safetensors": lambda: save_file({"w": torch.zeros(100_000)}, full_dir / "w.safetensors"),
        "torch.save": lambda: torch.save(torch.zeros(100_000), full_dir / "w.pt"),
        "pandas": lambda: pd.DataFrame({"a": range(100_000)}).to_csv(full_dir / "a.csv"),
        "open": lambda: (full_dir / "a.txt").write_text("x" * 100_000),
    }
    errors = {}
    for name, write in writes.items():
        try:
            write()
        except Exception as err:  # noqa: BLE001 - what each library raises is the point
            errors[name] = err
    assert set(errors) == set(writes), errors
    assert all(full_disk(err) for err in errors.values()), {k: repr(v)[:200] for k, v in errors.items()}
    assert not full_disk(RuntimeError("CUDA out of memory")) and not full_disk(ValueError("bad"))


def test_a_full_disk_while_saving_the_student_is_one_line_and_leaves_no_temporary_folder(
    tmp_path, tiny_llama, tiny_roberta, monkeypatch, capsys, full_dir
):
    import transformers.modeling_utils as modeling_utils
    from safetensors.torch import save_file
    from test_faults_distill import _annotate_cfg

    from distillery.annotate import annotate

    rows = tmp_path / "rows.csv"
    make_rows(64).to_csv(rows, index=False)
    out, student = tmp_path / "run", tmp_path / "student"
    annotate(_annotate_cfg(rows, tiny_llama, out))
    # The student's weights go to a disk with no space left (the real safetensors error, ENOSPC).
    monkeypatch.setattr(
        modeling_utils, "safe_save_file", lambda tensors, path, **kw: save_file(tensors, full_dir / "model.safetensors")
    )
    args = ["distill", "--out", str(out), "--student", str(student), "--student-model", str(tiny_roberta)]
    args += ["--device", "cpu", "--batch-size", "8", "--epochs", "1", "--min-steps", "0", "--lr", "1e-3"]
    assert distillery_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bug" not in err, err[-2000:]
    assert "could not write the student" in err.strip().splitlines()[-1] and "No space left" in err
    assert not [p.name for p in tmp_path.rglob("*distillery-tmp*")]
    monkeypatch.undo()
    assert distillery_cli.main(args) == 0 and (student / "distillery_student.json").exists()
