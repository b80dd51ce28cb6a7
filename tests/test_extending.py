"""The four extension points, used as docs/extending.md shows: a toy student kind, teacher backend,
calibration mode and active strategy registered through the public API, then chosen by name on
the command line and run end to end (active: annotate -> distill -> evaluate per round) on tiny
local models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_rows
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import distillery
from distillery import cli as distillery_cli


class KeywordTeacher:
    """A teacher backend that needs no model: label log-probs from counting cue words."""

    CUES = {"positive": ("love", "great", "wonderful"), "negative": ("hate", "terrible", "awful")}

    def __init__(self, cfg, task):
        self.labels = task.labels
        self.calls = 0

    def score(self, texts):
        self.calls += 1
        out = []
        for text in texts:
            hits = np.array(
                [sum(text.lower().count(w) for w in self.CUES.get(lab, ())) for lab in self.labels], dtype=float
            )
            raw = np.log(np.exp(hits) / np.exp(hits).sum())
            out.append(distillery.Annotation(logprobs=raw.tolist(), mass=1.0))
        return out

    def prompt_lengths(self, texts):
        return [len(t) for t in texts]


class TinyBert(distillery.StudentKind):
    """A student kind of our own: a 1-layer BERT with random weights, the tokenizer from --student-model."""

    summary = "a one-layer BERT from a config (test)"
    default_lr = 1e-3
    card_text = "tiny BERT classifier"

    def build(self, cfg, labels):
        tokenizer = AutoTokenizer.from_pretrained(cfg.student_model)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)},
        )
        torch.manual_seed(cfg.seed)
        return tokenizer, BertForSequenceClassification(config)


def least_confident(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - probs.max(axis=1)


def half_mean(raw, content_free, gold_raw, gold):
    """Subtract half of each label's mean raw log-prob."""
    return distillery.Calibration("half-mean", 0.5 * raw.mean(axis=0))


@pytest.fixture
def toys():
    distillery.teacher_backends.register("keywords", distillery.TeacherBackend("cue words (test)", KeywordTeacher))
    distillery.student_kinds.register("tiny-bert", TinyBert)
    distillery.calibration_modes.register(
        "half-mean", distillery.CalibrationMode("half the mean correction (test)", half_mean)
    )
    distillery.active_strategies.register(
        "least-confident", distillery.Strategy("1 - the top probability (test)", least_confident)
    )
    yield
    distillery.teacher_backends.unregister("keywords")
    distillery.student_kinds.unregister("tiny-bert")
    distillery.calibration_modes.unregister("half-mean")
    distillery.active_strategies.unregister("least-confident")


def test_registered_entries_are_choices_on_the_command_line(toys, capsys):
    with pytest.raises(SystemExit):
        distillery_cli.main(["active", "--help-all"])
    text = capsys.readouterr().out
    for name in ("keywords", "tiny-bert", "half-mean", "least-confident"):
        assert name in text
    with pytest.raises(ValueError, match="already registered"):
        distillery.student_kinds.register("tiny-bert", TinyBert)


def test_a_toy_of_each_kind_runs_end_to_end(toys, tiny_roberta, tmp_path):
    pool = tmp_path / "pool.csv"
    make_rows(60).to_csv(pool, index=False)
    out = tmp_path / "run"
    code = distillery_cli.main(
        [
            "active",
            "--data",
            str(pool),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--labels",
            "negative,positive",
            "--backend",
            "keywords",
            "--calibrate",
            "half-mean",
            "--strategy",
            "least-confident",
            "--student-kind",
            "tiny-bert",
            "--student-model",
            str(tiny_roberta),
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--min-steps",
            "4",
            "--batch-size",
            "8",
            "--speed-rows",
            "0",
            "--budget",
            "40",
            "--test-rows",
            "10",
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
    assert code == 0
    manifest = json.loads((out / "annotations" / "manifest.json").read_text())
    assert manifest["calibration"]["mode"] == "half-mean"
    frame = pd.concat(pd.read_csv(p) for p in sorted((out / "annotations").glob("part-*.csv")))
    raw = (
        frame[["raw_logprob_negative", "raw_logprob_positive"]].to_numpy() if "raw_logprob_negative" in frame else None
    )
    assert len(frame) == 40 and frame["teacher_label"].isin(["negative", "positive"]).all()
    if raw is not None:  # the calibration applied is ours: half the mean, subtracted
        bias = np.array([manifest["calibration"]["bias"][lab] for lab in ("negative", "positive")])
        np.testing.assert_allclose(bias, 0.5 * raw.mean(axis=0), atol=1e-6)
    rounds = [json.loads(line) for line in (out / "active" / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) >= 2 and [r["strategy"] for r in rounds[:2]] == ["random", "least-confident"]
    student = distillery.load_student(rounds[-1]["student"])
    assert student.kind == "tiny-bert" and type(student.model).__name__ == "BertForSequenceClassification"
    assert set(student.predict(["I love it", "I hate it"])) <= {"negative", "positive"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["agreement"] <= 1.0
