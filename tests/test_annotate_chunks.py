"""Chunk writing, resume after a kill, refusal to mix runs, retry of errored rows, calibration."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_rows

from distillery.annotate import AnnotateConfig, ManifestError, annotate, read_annotations
from distillery.annotate.calibration import calibrated, fit_gold_calibration
from distillery.core.annotations import label_columns

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tiny_llama, data, out, **kw):
    base = dict(
        data=str(data),
        out=str(out),
        text_column="review",
        label_column="sentiment",
        teacher=str(tiny_llama),
        device="cpu",
        limit=0,
        chunk_size=8,
        teacher_batch_size=4,
        test_fraction=0.25,
    )
    return AnnotateConfig.from_flat({**base, **kw})  # flat, as a config file: the backend's settings among them


def test_chunks_manifest_and_columns(tiny_llama, reviews_csv, tmp_path):
    root = annotate(_cfg(tiny_llama, reviews_csv, tmp_path / "run"))
    frame, manifest = read_annotations(root)
    assert sorted(p.name for p in root.glob("part-*.csv")) == [f"part-{i:05d}.csv" for i in range(5)]
    assert manifest["status"] == "complete" and manifest["rows"] == 40 and manifest["rows_failed"] == 0
    assert frame["id"].is_unique and len(frame) == 40
    probs = np.exp(frame[label_columns(["negative", "positive"])].to_numpy())
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert set(frame["split"]) == {"train", "test"}
    assert (frame["teacher"] == str(tiny_llama)).all() and (frame["prompt_hash"] == manifest["prompt_hash"]).all()
    assert ((frame["label_mass"] > 0) & (frame["label_mass"] <= 1)).all()
    assert (root / "config.yaml").is_file() and manifest["config"]["teacher"] == str(tiny_llama)


def test_mean_calibration_removes_the_label_prior(tiny_llama, reviews_csv, tmp_path):
    root = annotate(_cfg(tiny_llama, reviews_csv, tmp_path / "run", calibrate="mean"))
    frame, manifest = read_annotations(root)
    labels = manifest["labels"]
    raw = frame[label_columns(labels, raw=True)].to_numpy()
    bias = np.array([manifest["calibration"]["bias"][lab] for lab in labels])
    assert np.allclose(bias, raw.mean(axis=0))
    assert np.allclose(frame[label_columns(labels)].to_numpy(), calibrated(raw, bias))
    assert (frame["teacher_label"] == [labels[i] for i in calibrated(raw, bias).argmax(1)]).all()


def test_gold_calibration_recovers_a_known_bias_and_temperature():
    rng = np.random.default_rng(0)
    true_bias, true_t = np.array([0.0, 1.5, -0.7]), 2.5
    raw = rng.normal(0, 3, size=(20000, 3))
    probs = np.exp(calibrated(raw, true_bias, true_t))
    gold = np.array([rng.choice(3, p=p) for p in probs])
    bias, temperature = fit_gold_calibration(raw, gold)
    assert temperature == pytest.approx(true_t, rel=0.05)
    assert np.allclose(bias, true_bias, atol=0.15)


def test_gold_calibration_on_a_run_and_switching_mode_without_reannotating(tiny_llama, reviews_csv, tmp_path, capsys):
    root = annotate(_cfg(tiny_llama, reviews_csv, tmp_path / "run", calibrate="mean"))
    annotate(_cfg(tiny_llama, reviews_csv, tmp_path / "run", calibrate="gold", calibrate_on=12))
    assert "0 to annotate" in capsys.readouterr().out
    frame, manifest = read_annotations(root)
    labels, record = manifest["labels"], manifest["calibration"]
    assert record["mode"] == "gold" and record["fitted_on"] == 12 and record["temperature"] > 0
    fit = frame[(frame["split"] != "test")].head(12)
    bias, temperature = fit_gold_calibration(
        fit[label_columns(labels, raw=True)].to_numpy(), fit["gold"].map(labels.index).to_numpy()
    )
    assert temperature == pytest.approx(record["temperature"], rel=1e-4)
    raw = frame[label_columns(labels, raw=True)].to_numpy()
    assert np.allclose(frame[label_columns(labels)].to_numpy(), calibrated(raw, bias, temperature), atol=1e-4)
    with pytest.raises(ValueError, match="gold labels"):
        annotate(_cfg(tiny_llama, reviews_csv, tmp_path / "nogold", label_column="", calibrate="gold"))


def test_rerun_does_nothing_and_changed_teacher_or_labels_is_refused(tiny_llama, reviews_csv, tmp_path, capsys):
    cfg = _cfg(tiny_llama, reviews_csv, tmp_path / "run")
    root = annotate(cfg)
    before = {p.name: p.read_bytes() for p in root.glob("part-*.csv")}
    annotate(cfg)
    assert "40 already done, 0 to annotate" in capsys.readouterr().out
    with pytest.raises(ManifestError, match="labels"):
        annotate(_cfg(tiny_llama, reviews_csv, tmp_path / "run", labels=["negative", "positive", "neutral"]))
    with pytest.raises(ManifestError, match="prompt_hash"):
        annotate(
            _cfg(tiny_llama, reviews_csv, tmp_path / "run", task="sentiment-3way", labels=["negative", "positive"])
        )
    with pytest.raises(ManifestError, match="teacher"):
        annotate(_cfg(tiny_llama, reviews_csv, tmp_path / "run", teacher="smollm2"))
    assert {p.name: p.read_bytes() for p in root.glob("part-*.csv")} == before  # nothing lost or mixed


def test_errored_rows_are_kept_as_data_and_retried(tiny_llama, tmp_path):
    data = make_rows(12)
    data.loc[3, "review"] = "very long " * 100
    path = tmp_path / "long.csv"
    data.to_csv(path, index=False)
    root = annotate(_cfg(tiny_llama, path, tmp_path / "run", max_prompt_tokens=150))
    frame, manifest = read_annotations(root)
    bad = frame[frame["error_type"] != ""]
    assert len(bad) == 1 and bad["error_type"].iloc[0] == "prompt_too_long" and bad["teacher_label"].iloc[0] == ""
    assert manifest["rows_failed"] == 1
    annotate(_cfg(tiny_llama, path, tmp_path / "run", max_prompt_tokens=2048))
    frame, manifest = read_annotations(root)
    assert manifest["rows_failed"] == 0 and (frame["error_type"] == "").all() and frame["id"].is_unique


def test_tampered_chunk_is_detected(tiny_llama, reviews_csv, tmp_path):
    root = annotate(_cfg(tiny_llama, reviews_csv, tmp_path / "run"))
    chunk = root / "part-00001.csv"
    chunk.write_text(chunk.read_text()[:-50])
    with pytest.raises(ManifestError, match="checksum"):
        read_annotations(root)


@pytest.mark.integration
def test_kill_mid_run_then_resume_annotates_each_row_once(tiny_llama, tmp_path):
    n = 1500
    path = tmp_path / "many.csv"
    make_rows(n).to_csv(path, index=False)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "distillery",
        "annotate",
        "--data",
        str(path),
        "--out",
        str(out),
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--teacher",
        str(tiny_llama),
        "--device",
        "cpu",
        "--limit",
        "0",
        "--chunk-size",
        "25",
        "--teacher-batch-size",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "annotations" / "part-00002.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list((out / "annotations").glob("part-*.csv")))
    assert 0 < written < n // 25, "the kill must land mid-run"
    manifest = json.loads((out / "annotations" / "manifest.json").read_text())
    assert manifest["status"] == "annotating"

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{n - written * 25} to annotate" in done.stdout  # finished chunks were not redone
    frame, _ = read_annotations(out / "annotations")
    expected = pd.read_csv(path)["review"]
    assert len(frame) == n and frame["id"].is_unique
    assert sorted(frame["text"]) == sorted(expected)


def test_a_teacher_that_rarely_says_the_label_words_is_reported(tiny_llama, reviews_csv, tmp_path, capsys):
    root = annotate(_cfg(tiny_llama, reviews_csv, tmp_path / "run"))
    manifest = json.loads((root / "manifest.json").read_text())
    frame, _ = read_annotations(root)
    # A random 2-layer model spreads its next token over the whole vocabulary: little mass on the labels.
    assert (
        manifest["label_mass_median"] == pytest.approx(frame["label_mass"].median())
        and manifest["label_mass_median"] < 0.05
    )
    assert "not what it tends to say" in capsys.readouterr().out


def test_topic_task_takes_its_labels_from_the_command_line_and_labels_sharing_a_first_token_are_found():
    from distillery.core.errors import UserError
    from distillery.core.tasks import load_task, shared_first_tokens

    task = load_task("topic", ["world", "sports", "business", "sci/tech"])
    assert (
        task.labels == ["world", "sports", "business", "sci/tech"]
        and "world, sports, business or sci/tech" in task.messages("x")[-1]["content"]
    )
    with pytest.raises(UserError, match="pass --labels with the label set"):
        load_task("topic")
    words = {" world": [1], " sports": [2], " business": [3], " sci/tech": [4, 5], " science": [4, 6]}  # ' sci' shared
    assert shared_first_tokens(
        load_task("topic", ["world", "sports", "business", "sci/tech", "science"]), words.__getitem__
    ) == [["sci/tech", "science"]]
    assert shared_first_tokens(task, words.__getitem__) == []
