"""Issue #26, distill's faults: --resume on other training data, a full disk while checkpointing,
and `run`/`active` refusing inputs that can only fail after the teacher and the training."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_rows

import distillery.distill.loop as loop_mod
from distillery import cli as distillery_cli
from distillery.annotate import AnnotateConfig, annotate
from distillery.core.errors import UserError
from distillery.core.reviewed import GOLD_COLUMNS
from distillery.distill import DistillConfig, distill
from distillery.distill.checkpoint import find_checkpoint


class Stop(Exception):
    """The process 'dies' right after its first checkpoint (a kill -9, in-process)."""


@pytest.fixture(scope="module")
def rows_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rows") / "rows.csv"
    make_rows(64).to_csv(path, index=False)
    return path


def _annotate_cfg(rows_csv: Path, tiny_llama: Path, out: Path, **kw) -> AnnotateConfig:
    return AnnotateConfig(
        data=str(rows_csv),
        text_column="review",
        label_column="sentiment",
        settings={"teacher": str(tiny_llama)},
        device="cpu",
        limit=0,
        out=str(out),
        test_fraction=0.0,
        **kw,
    )


@pytest.fixture(scope="module")
def annotated(rows_csv, tiny_llama, tmp_path_factory) -> Path:
    """64 rows annotated by the tiny teacher (calibration auto: gold, every row has a gold label)."""
    out = tmp_path_factory.mktemp("annotated")
    annotate(_annotate_cfg(rows_csv, tiny_llama, out))
    return out


def _distill_cfg(out: Path, model: Path, student: Path, **kw) -> DistillConfig:
    return DistillConfig(
        out=str(out),
        student=str(student),
        student_model=str(model),
        device="cpu",
        batch_size=8,
        epochs=1,
        min_steps=0,
        val_fraction=0.125,
        lr=1e-3,
        checkpoint_every=2,
        **kw,
    )  # 7 steps, a checkpoint at 2, 4 and 6


def _stop_after_first_checkpoint(monkeypatch, training) -> None:
    """Run ``training`` until its first checkpoint is saved whole, then stop it (as a kill would)."""
    real = loop_mod.save_checkpoint

    def save_then_stop(*args):
        real(*args)
        raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(loop_mod, "save_checkpoint", save_then_stop)
        with pytest.raises(Stop):
            training()


def _stopped_after_first_checkpoint(
    annotated: Path, tiny_roberta: Path, tmp_path: Path, monkeypatch
) -> tuple[Path, Path]:
    """A copy of the annotations and a student folder whose training stopped right after its first checkpoint."""
    out = tmp_path / "run"
    shutil.copytree(annotated, out)
    student = tmp_path / "student"
    _stop_after_first_checkpoint(monkeypatch, lambda: distill(_distill_cfg(out, tiny_roberta, student)))
    assert find_checkpoint(student) == student / "checkpoint"
    return out, student


def test_resume_refuses_annotations_calibrated_again(
    annotated, rows_csv, tiny_llama, tiny_roberta, tmp_path, monkeypatch
):
    out, student = _stopped_after_first_checkpoint(annotated, tiny_roberta, tmp_path, monkeypatch)
    annotate(
        _annotate_cfg(rows_csv, tiny_llama, out, calibrate="mean")
    )  # no teacher call: the chunks are calibrated anew
    with pytest.raises(
        UserError,
        match=r"the annotations changed since the checkpoint .*\(calibration gold then, mean now\).*"
        r"without --resume",
    ):
        distill(_distill_cfg(out, tiny_roberta, student, resume=True))


def test_resume_refuses_annotations_of_another_file(annotated, tiny_llama, tiny_roberta, tmp_path, monkeypatch):
    out, student = _stopped_after_first_checkpoint(annotated, tiny_roberta, tmp_path, monkeypatch)
    other = tmp_path / "other.csv"
    make_rows(64).assign(review=lambda f: f["review"] + " again").to_csv(other, index=False)
    annotate(_annotate_cfg(other, tiny_llama, out, restart_annotations=True))  # the same calibration mode, other rows
    with pytest.raises(
        UserError, match=r"the annotations changed since the checkpoint .*\(chunk part-00000.csv changed\)"
    ):
        distill(_distill_cfg(out, tiny_roberta, student, resume=True))


def test_resume_refuses_other_reviewed_labels(annotated, tiny_roberta, tmp_path, monkeypatch):
    out, student = _stopped_after_first_checkpoint(annotated, tiny_roberta, tmp_path, monkeypatch)
    chunk = pd.read_csv(out / "annotations" / "part-00000.csv", dtype=str, keep_default_na=False)
    people = chunk.head(5).assign(
        label="negative", annotator="me", labelled_at="2025-01-01", source="csv", imported_at="2025-01-01"
    )
    (out / "review").mkdir()
    people[GOLD_COLUMNS].to_csv(out / "review" / "gold.csv", index=False)  # as 'distillery review --import' leaves it
    with pytest.raises(UserError, match=r"the reviewed labels changed since the checkpoint.*without --resume"):
        distill(_distill_cfg(out, tiny_roberta, student, resume=True))


def test_resume_refuses_a_checkpoint_without_a_data_fingerprint(annotated, tiny_roberta, tmp_path, monkeypatch):
    out, student = _stopped_after_first_checkpoint(annotated, tiny_roberta, tmp_path, monkeypatch)
    settings = student / "checkpoint" / "settings.json"
    saved = json.loads(settings.read_text())
    saved.pop("training_data", None)  # as an older distillery wrote it
    settings.write_text(json.dumps(saved))
    with pytest.raises(
        UserError, match=r"records no fingerprint of the rows and labels it trained on.*without --resume"
    ):
        distill(_distill_cfg(out, tiny_roberta, student, resume=True))


def test_online_resume_refuses_other_teacher_settings_and_goes_on_with_the_same(
    rows_csv, tiny_llama, tiny_roberta, tmp_path, monkeypatch
):
    source = _annotate_cfg(rows_csv, tiny_llama, tmp_path / "run", calibrate="content-free")
    cfg = _distill_cfg(
        tmp_path / "run", tiny_roberta, tmp_path / "student", teacher_mode="online", hard_labels="teacher"
    )
    _stop_after_first_checkpoint(monkeypatch, lambda: distill(cfg, source))
    resume = _distill_cfg(
        tmp_path / "run", tiny_roberta, tmp_path / "student", teacher_mode="online", hard_labels="teacher", resume=True
    )
    with pytest.raises(
        UserError,
        match=r"the teacher settings changed since the checkpoint .*\(calibrate 'content-free' then, 'mean' now\)",
    ):
        distill(resume, _annotate_cfg(rows_csv, tiny_llama, tmp_path / "run", calibrate="mean"))
    assert (distill(resume, source) / "train_summary.json").is_file()


FULL_DISK = {
    "oserror": OSError(28, "No space left on device"),
    "torch": RuntimeError(
        "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: file write failed"
    ),
}


@pytest.mark.parametrize("error", sorted(FULL_DISK))
def test_a_full_disk_while_checkpointing_is_one_line_and_resumable(
    annotated, tiny_roberta, tmp_path, monkeypatch, capsys, error
):
    student = tmp_path / "student"
    real_save, real_checkpoint, calls = torch.save, loop_mod.save_checkpoint, []

    def counting(*args):
        calls.append(1)
        real_checkpoint(*args)

    def full_disk(obj, f, *args, **kwargs):
        if len(calls) >= 2:  # the second checkpoint: the disk is full
            raise FULL_DISK[error]
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(loop_mod, "save_checkpoint", counting)
    monkeypatch.setattr(torch, "save", full_disk)
    args = [
        "distill",
        "--out",
        str(annotated),
        "--student",
        str(student),
        "--student-model",
        str(tiny_roberta),
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--min-steps",
        "0",
        "--val-fraction",
        "0.125",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "2",
    ]
    assert distillery_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "bug in Distillery" not in err and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "could not write the checkpoint of step 4" in line, err
    assert ("No space left on device" if error == "oserror" else "PytorchStreamWriter failed writing") in line
    assert "last whole checkpoint" in line and "step 2) is kept" in line and "--resume" in line
    # The first checkpoint is whole and the half-written one does not claim to be.
    assert find_checkpoint(student) == student / "checkpoint"
    assert json.loads((student / "checkpoint" / "progress.json").read_text())["step"] == 2
    assert not (student / "checkpoint.new" / "progress.json").exists()
    monkeypatch.undo()  # space freed
    assert distillery_cli.main([*args, "--resume"]) == 0
    assert "resuming at optimizer step 2 of 7" in capsys.readouterr().out
    log = [json.loads(line) for line in (student / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 8))


def _run_args(tiny_llama, tiny_roberta, data: Path, out: Path, *extra) -> list:
    return [
        "run",
        "--data",
        str(data),
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--labels",
        "negative,positive",
        "--teacher",
        str(tiny_llama),
        "--student-model",
        str(tiny_roberta),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--min-steps",
        "2",
        "--batch-size",
        "8",
        "--speed-rows",
        "0",
        "--out",
        str(out),
        *extra,
    ]


def test_run_without_test_rows_stops_before_the_teacher(tiny_llama, tiny_roberta, rows_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert distillery_cli.main(_run_args(tiny_llama, tiny_roberta, rows_csv, out, "--test-fraction", "0")) == 2
    err = capsys.readouterr().err
    assert "run: error: evaluate scores the test rows" in err and "found none" in err, err
    assert "raise --test-fraction" in err and "--eval-split all" in err
    assert not (out / "annotations" / "manifest.json").exists() and not (out / "student").exists(), (
        "no teacher call, no training"
    )


def test_run_with_too_few_training_rows_stops_before_the_teacher(tiny_llama, tiny_roberta, tmp_path, capsys):
    data = tmp_path / "rows.csv"
    make_rows(12).assign(part="test").to_csv(data, index=False)
    out = tmp_path / "run"
    assert distillery_cli.main(_run_args(tiny_llama, tiny_roberta, data, out, "--split-column", "part")) == 2
    err = capsys.readouterr().err
    assert "run: error: distill trains on the train rows; expected at least 2" in err and "found 0" in err, err
    assert not (out / "annotations" / "manifest.json").exists()


def test_active_without_test_rows_stops_before_the_teacher(tiny_llama, tiny_roberta, rows_csv, tmp_path, capsys):
    out = tmp_path / "run"
    code = distillery_cli.main(
        [
            "active",
            "--data",
            str(rows_csv),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--labels",
            "negative,positive",
            "--teacher",
            str(tiny_llama),
            "--student-model",
            str(tiny_roberta),
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--min-steps",
            "2",
            "--batch-size",
            "8",
            "--speed-rows",
            "0",
            "--budget",
            "20",
            "--test-rows",
            "0",
            "--seed-rows",
            "10",
            "--round-rows",
            "10",
            "--patience",
            "0",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "active: error: expected --test-rows of at least 1" in err, err
    assert not (out / "annotations" / "manifest.json").exists(), "no teacher call"
