"""Issue #26, predict: a cut part is predicted again, a same-size edit of the input is seen,
the input is never the output, and a refused run leaves nothing on disk and names --predictions.

A tiny random encoder student and 30 rows (chunks of 7): each test runs in seconds."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import make_rows

from distillery import cli as distillery_cli

WAIT_S = 60  # the longest a test here waits on the process that holds the lock


@pytest.fixture(scope="module")
def student(tiny_roberta, tmp_path_factory):
    """A saved encoder student (random weights, labels negative/positive)."""
    from transformers import AutoTokenizer, RobertaForSequenceClassification

    path = tmp_path_factory.mktemp("faults_predict") / "student"
    model = RobertaForSequenceClassification.from_pretrained(tiny_roberta)
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_roberta).save_pretrained(path)
    (path / "distillery_student.json").write_text(
        json.dumps({"student": "encoder", "labels": ["negative", "positive"]})
    )
    return path


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.csv"
    make_rows(30).to_csv(path, index=False)
    return path


def _predict(student, data, out, *extra) -> int:
    return distillery_cli.main(
        [
            "predict",
            "--student",
            str(student),
            "--data",
            str(data),
            "--text-column",
            "review",
            "--chunk-size",
            "7",
            "--predict-batch-size",
            "4",
            "--device",
            "cpu",
            "--predictions",
            str(out),
            *extra,
        ]
    )


def test_case4_a_cut_part_is_predicted_again_never_joined(student, rows, tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole.csv"
    assert _predict(student, rows, whole) == 0
    predict_mod = importlib.import_module("distillery.serve.predict")
    real, calls = predict_mod.prediction_frame, []

    def crash_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stopped in its third chunk: parts 0 and 1 are on disk
        return real(*args)

    monkeypatch.setattr(predict_mod, "prediction_frame", crash_on_third)
    out = tmp_path / "preds.csv"
    assert _predict(student, rows, out) == 130
    cut = tmp_path / "preds.csv.parts" / "part-00001.csv"
    os.truncate(cut, cut.stat().st_size // 2)
    calls.clear()
    capsys.readouterr()
    monkeypatch.setattr(predict_mod, "prediction_frame", lambda *a: (calls.append(1), real(*a))[1])
    assert _predict(student, rows, out) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(whole))
    assert len(calls) == 4, "30 rows in chunks of 7: the cut part 1 and parts 2, 3, 4 are predicted"
    assert "part-00001.csv does not match its checksum" in capsys.readouterr().out


def test_case7_a_same_size_edit_with_its_mtime_restored_is_a_changed_input(student, rows, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert _predict(student, rows, out) == 0
    before = rows.stat()
    text = rows.read_bytes()
    assert b"love" in text
    rows.write_bytes(text.replace(b"love", b"lave", 1))
    os.utime(rows, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert rows.stat().st_size == before.st_size and rows.stat().st_mtime_ns == before.st_mtime_ns
    capsys.readouterr()
    assert _predict(student, rows, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "changed since" in err and "--restart-predictions" in err, err
    assert _predict(student, rows, out, "--restart-predictions") == 0
    assert pd.read_csv(out)["text"].str.contains("lave").any()


def test_case11a_predictions_that_are_the_input_however_spelt_are_refused(student, rows, tmp_path, capsys):
    original = rows.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(rows)
    for spelt in (tmp_path / "sub" / ".." / "rows.csv", tmp_path / "link.csv"):
        capsys.readouterr()
        assert _predict(student, rows, spelt, "--restart-predictions") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "pass another --predictions" in err, err
        assert rows.read_bytes() == original, "the input is never replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "rows.csv", "sub"], "nothing new on disk"


def test_case11b_a_refused_predict_leaves_no_parts_folder(student, rows, tmp_path, capsys):
    mine = tmp_path / "mine.csv"
    mine.write_text("precious,data\n1,2\n")
    assert _predict(student, rows, mine) == 2
    assert "not written by this predict run" in capsys.readouterr().err
    assert mine.read_text() == "precious,data\n1,2\n"
    assert not (tmp_path / "mine.csv.parts").exists(), "a refused run leaves nothing new on disk"


HOLD = (
    "import sys\nfrom distillery.core.lock import locked\nwith locked(sys.argv[1], 'predict'):\n    sys.stdin.read()\n"
)


def test_case11c_the_second_process_refusal_names_predictions(student, rows, tmp_path, capsys):
    out, parts = tmp_path / "preds.csv", tmp_path / "preds.csv.parts"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(parts)], stdin=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while f'"pid": {holder.pid}' not in (
            (parts / ".distillery.lock").read_text() if (parts / ".distillery.lock").is_file() else ""
        ):
            assert holder.poll() is None and time.monotonic() < deadline, "the other process did not take the lock"
            time.sleep(0.05)
        capsys.readouterr()
        assert _predict(student, rows, out) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"another distillery process (pid {holder.pid}" in err, err
        assert "pass another --predictions" in err and "--out" not in err, err
        assert not out.exists() and [p.name for p in parts.iterdir()] == [".distillery.lock"], (
            "the refused run wrote nothing"
        )
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def test_predict_and_export_never_touch_a_users_parts_or_staging_files(student, rows, tmp_path, capsys):
    """QA follow-ups: a user's PREDICTIONS.parts/ folder, a cut run.json of ours, --predictions through a
    folder that does not exist, and a killed export's work folder left behind."""
    from test_faults import one_line, plant, unchanged

    from distillery.core.rundir import write_text

    predict = ["predict", "--student", str(student), "--data", str(rows), "--text-column", "review", "--device", "cpu"]
    parts = plant(tmp_path / "P.csv.parts", ("run.json", "part-00000.csv"))
    assert distillery_cli.main([*predict, "--predictions", str(tmp_path / "P.csv"), "--restart-predictions"]) == 2
    assert "P.csv.parts/" in one_line(capsys)
    unchanged(parts)
    assert distillery_cli.main([*predict, "--predictions", str(tmp_path / "new" / ".." / rows.name)]) == 2
    assert "the --data file itself" in one_line(capsys) and not (tmp_path / "new").exists()
    assert distillery_cli.main([*predict, "--predictions", str(tmp_path / "Q.csv")]) == 0
    write_text(tmp_path / "Q.csv.parts" / "run.json", "not json")  # ours, then cut
    assert distillery_cli.main([*predict, "--predictions", str(tmp_path / "Q.csv")]) == 2
    assert "run.json: not a predict state distillery can read" in one_line(capsys)
    assert (tmp_path / "Q.csv.parts" / "run.json").read_text() == "not json"
    export = [
        "export",
        "--student",
        str(student),
        "--onnx-dir",
        str(tmp_path / "onnx"),
        "--variant",
        "fp32",
        "--out",
        str(tmp_path),
    ]
    assert distillery_cli.main(export) == 0
    from distillery.core.rundir import mark_made, temporary_name

    leftover = tmp_path / "onnx" / f".export-abc{temporary_name('')}" / "fp32"
    leftover.mkdir(parents=True)
    mark_made(leftover.parent)  # export records its work folder as made by it, first thing
    (leftover / "model.onnx").write_text("half")  # what a kill -9 mid-export leaves
    assert distillery_cli.main(export) == 0, capsys.readouterr().err
    assert not leftover.parent.exists()
