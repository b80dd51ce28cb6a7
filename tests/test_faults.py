"""Issue #26: `--overwrite` (and, since #27, `--restart-annotations` and `--restart-predictions`) never deletes or
replaces a user's file. Every stage is walked with
--overwrite over folders that hold user files (plain files, files named like Distillery's, a
subfolder, a symlink), twice (a retry after a failure must not claim what the failure touched);
every user file's bytes must be unchanged, and a name clash is one line, exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from distillery import cli as distillery_cli
from distillery.core.rundir import OWNED_FILE, write_text

TINY = ["--device", "cpu", "--epochs", "1", "--min-steps", "4", "--batch-size", "8", "--speed-rows", "0"]


def plant(folder: Path, names: tuple[str, ...] = ()) -> dict[Path, bytes]:
    """User files in ``folder``: a plain file, ``names`` (Distillery's own names), a subfolder and a symlink."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        folder / "notes.txt": b"my notes\n",
        folder / "mine" / "deep.txt": b"deep\n",
        **{folder / n: f"user {n}\n".encode() for n in names},
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink(folder / "notes.txt", folder / "link.txt")
    files[folder / "link.txt"] = files[folder / "notes.txt"]
    return files


def unchanged(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.is_file() and path.read_bytes() == data, f"{path} was changed or deleted"
    for path in files:
        if path.name == "link.txt":
            assert path.is_symlink()


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("distillery")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_case1_a_failed_overwrite_claims_nothing_and_the_retry_deletes_nothing(
    reviews_csv, tiny_llama, tmp_path, capsys
):
    """Case 1: a user's part-00000.csv and an unparseable manifest.json in R/annotations; annotate --overwrite twice."""
    run = tmp_path / "R"
    files = plant(run / "annotations", ("part-00000.csv", "manifest.json"))
    argv = [
        "annotate",
        "--data",
        str(reviews_csv),
        "--text-column",
        "review",
        "--labels",
        "negative,positive",
        "--teacher",
        str(tiny_llama),
        "--device",
        "cpu",
        "--out",
        str(run),
        "--overwrite",
        "--restart-annotations",
    ]
    for _ in range(2):
        assert distillery_cli.main(argv) == 2
        line = one_line(capsys)
        assert "manifest.json" in line and "part-00000.csv" in line and "did not write" in line
        unchanged(files)
        assert (
            not (run / "annotations" / OWNED_FILE).is_file()
            or "part-00000.csv" not in (run / "annotations" / OWNED_FILE).read_text()
        )


def test_case1_our_own_manifest_that_does_not_parse_is_one_line_and_kept(reviews_csv, tiny_llama, tmp_path, capsys):
    root = tmp_path / "R" / "annotations"
    write_text(root / "manifest.json", "{not json")  # written by distillery, then torn by something else
    argv = [
        "annotate",
        "--data",
        str(reviews_csv),
        "--text-column",
        "review",
        "--labels",
        "negative,positive",
        "--teacher",
        str(tiny_llama),
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "R"),
        "--overwrite",
        "--restart-annotations",
    ]
    assert distillery_cli.main(argv) == 2
    assert "manifest.json: not a manifest distillery can read" in one_line(capsys)
    assert (root / "manifest.json").read_text() == "{not json"


# The flags that let each stage write where files it did not write are, and start its work over.
FORCE = {
    "annotate": ["--overwrite", "--restart-annotations"],
    "distill": ["--overwrite"],
    "export": ["--overwrite"],
    "predict": ["--restart-predictions"],
    "evaluate": [],
    "review": [],
}


def test_every_stage_with_overwrite_leaves_every_user_file_as_it_was(
    reviews_csv, tiny_llama, tiny_roberta, tmp_path, capsys
):
    """annotate, distill (case 2: a user's checkpoint/ subfolder), export and predict with --overwrite, evaluate
    and review (which have no --overwrite: they write beside a user's files), into folders of user files, each twice."""
    run, student = tmp_path / "run", tmp_path / "student"
    files = {
        **plant(run),
        **plant(run / "annotations"),
        **plant(student),
        **plant(tmp_path / "onnx"),
        **plant(run / "review"),
    }
    (student / "checkpoint").mkdir()
    (student / "checkpoint" / "w.txt").write_text("w\n")
    files[student / "checkpoint" / "w.txt"] = b"w\n"
    files[student / ".notes.tmp1"] = b"looks temporary\n"  # a name like a temporary file's is still the user's
    (student / ".notes.tmp1").write_bytes(files[student / ".notes.tmp1"])
    folders = [
        student / "checkpoint" / "sub",
        student / "checkpoint.old",
        run / "annotations" / "part-00099.csv",
        run / "annotations" / "part-zz.csv",
    ]  # empty folders of the user's, named like distillery's
    for folder in folders:
        folder.mkdir()
    data = [
        "--data",
        str(reviews_csv),
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--labels",
        "negative,positive",
    ]
    stages = [
        ["annotate", *data, "--teacher", str(tiny_llama), "--device", "cpu", "--out", str(run)],
        ["distill", "--out", str(run), "--student", str(student), "--student-model", str(tiny_roberta), *TINY[:-2]],
        ["evaluate", "--out", str(run), "--students", str(student), "--device", "cpu", "--speed-rows", "0"],
        [
            "export",
            "--out",
            str(run),
            "--student",
            str(student),
            "--onnx-dir",
            str(tmp_path / "onnx"),
            "--variant",
            "fp32",
        ],
        [
            "predict",
            "--student",
            str(student),
            "--data",
            str(reviews_csv),
            "--text-column",
            "review",
            "--predictions",
            str(run / "predictions.csv"),
            "--device",
            "cpu",
        ],
        ["review", "--out", str(run), "--student", str(student), "--review-rows", "10", "--device", "cpu"],
    ]
    for argv in stages:
        for _ in range(2):
            code = distillery_cli.main([*argv, *FORCE[argv[0]]])  # evaluate and review have none
            assert code == 0, capsys.readouterr().err
            unchanged(files)
            assert all(folder.is_dir() and not any(folder.iterdir()) for folder in folders), (
                "a user's empty folder was removed or written"
            )
    capsys.readouterr()
    assert (student / "distillery_student.json").is_file() and (tmp_path / "onnx" / "model.onnx").is_file()
    # A user's file by one of Distillery's names is never replaced, --overwrite or not: one line, exit 2.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my report\n")
    assert distillery_cli.main([*stages[2], "--out", str(mine), "--annotations", str(run / "annotations")]) == 2
    assert "report.md" in one_line(capsys) and (mine / "report.md").read_text() == "my report\n"
    (tmp_path / "onnx2").mkdir()
    (tmp_path / "onnx2" / "model.onnx").write_text("my model\n")
    assert distillery_cli.main([*stages[3], "--onnx-dir", str(tmp_path / "onnx2"), "--overwrite"]) == 2
    assert "model.onnx" in one_line(capsys) and (tmp_path / "onnx2" / "model.onnx").read_text() == "my model\n"


def test_remove_owned_deletes_exactly_the_listed_files(tmp_path):
    from distillery.core.rundir import foreign, make_folder, remove_owned

    folder = tmp_path / "f"
    write_text(folder / "ours.txt", "x")
    write_text(folder / "sub" / "ours.txt", "x")
    files = plant(folder)
    (folder / "sub" / "theirs.txt").write_text("t")
    files[folder / "sub" / "theirs.txt"] = b"t"
    made = make_folder(folder / "made")
    (made / "lib_wrote.bin").write_bytes(b"b")
    assert foreign(folder) == ["link.txt", "mine/deep.txt", "notes.txt", "sub/theirs.txt"]
    remove_owned(folder)
    unchanged(files)
    assert not (folder / "ours.txt").exists() and not (folder / "sub" / "ours.txt").exists() and not made.exists()
    assert json.loads((folder / OWNED_FILE).read_text())["files"] == []


def test_install_stops_before_moving_anything_over_a_users_file(tmp_path):
    from distillery.core.rundir import install, make_folder

    source, target = make_folder(tmp_path / "new"), tmp_path / "target"
    (source / "config.json").write_text("new")
    (source / "model.bin").write_text("new")
    files = plant(target, ("model.bin",))
    with pytest.raises(Exception, match="model.bin"):
        install(source, target)
    unchanged(files)
    assert not (target / "config.json").exists()


@pytest.mark.parametrize(
    "argv, yaml_text, flag",
    [
        (["distill", "--seed", "-1"], None, "--seed"),  # case 10
        (["distill"], "seed: 1.0e+23\n", "seed"),  # case 10: a YAML seed of 1e23
        (["distill", "--weight-decay", "-1"], None, "--weight-decay"),  # case 10
        (["distill", "--device", "foo"], None, "--device"),  # case 10
        (["distill", "--max-grad-norm", "0"], None, "--max-grad-norm"),  # case 6: trained nothing, exit 0
        (["distill", "--warmup-ratio", "2"], None, "--warmup-ratio"),  # case 6
        (
            [
                "annotate",
                "--backend",
                "openai",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--api-key-env",
                "abcdef0123456789abcdef0123456789",
            ],
            None,
            "--api-key-env",
        ),  # case 3: a key in the wrong flag
    ],
)
def test_the_reported_settings_are_one_line_and_write_nothing(argv, yaml_text, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        distillery_cli, "run_stages", lambda command, configs: pytest.fail(f"{command} ran with {argv}")
    )
    monkeypatch.chdir(tmp_path)
    extra = []
    if yaml_text:
        (tmp_path / "my.yaml").write_text(yaml_text)
        extra = ["--config", "my.yaml"]
    assert distillery_cli.main([*argv, *extra, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in err, err
    assert "abcdef0123456789" not in err and not (tmp_path / "run").exists()


def test_a_kill_while_making_a_folder_leaves_nothing_a_rerun_stumbles_on(tmp_path, monkeypatch):
    """make_folder is atomic: killed after its mkdir (before its marker), it leaves no unmarked folder at
    the name (one stopped a resumed distill: 'checkpoint.new (File exists)', CI of issue #27)."""
    from distillery.core import rundir

    target = tmp_path / "checkpoint.new"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the kill, after the folder exists and before its marker is written

    monkeypatch.setattr(rundir, "replacing", killed)
    with pytest.raises(KeyboardInterrupt):
        rundir.make_folder(target)
    monkeypatch.undo()
    assert not target.exists()
    rundir.remove_leftovers(tmp_path)  # what the next run does first under its lock
    assert not any(tmp_path.iterdir())
    assert rundir.made(rundir.make_folder(target))
