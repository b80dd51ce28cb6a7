"""Metrics on hand-checked cases, and the report rendered from its dataclass and template."""

import numpy as np
import pytest

from evaluation import ReportData, agreement_metrics, classification_metrics, expected_calibration_error, render_report


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    gold = np.array([0, 0, 0, 1])  # 75% right at 75% confidence
    assert expected_calibration_error(probs, gold) == pytest.approx(0.0)


def test_ece_of_an_overconfident_model():
    probs = np.array([[1.0, 0.0]] * 4)
    gold = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, gold) == pytest.approx(0.5)


def test_classification_and_agreement_metrics():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    gold = np.array([0, 1, 1, 1])
    m = classification_metrics(probs, gold, ["neg", "pos"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["neg"]["precision"] == 0.5 and m["per_class"]["pos"]["recall"] == pytest.approx(2 / 3)
    assert m["confusion"] == [[1, 0], [1, 2]]
    a = agreement_metrics(np.array([0, 1, 0, 1]), np.array([0, 1, 0, 1]), 2)
    assert a["agreement"] == 1.0 and a["kappa"] == pytest.approx(1.0)
    b = agreement_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), 2)
    assert b["agreement"] == 0.5 and b["kappa"] == pytest.approx(0.0)


def _model(acc, **extra):
    return {"accuracy": acc, "macro_f1": None if acc is None else acc - 0.01, "ece": 0.05, "per_class": {"neg": {"f1": 0.5}, "pos": {"f1": 0.6}}, **extra}


def test_report_renders_every_section():
    data = ReportData(
        task="sentiment-binary", teacher="smollm2", split="test", n_rows=10, n_failed=1, labels=["neg", "pos"],
        majority_label="neg", majority_accuracy=0.5,
        models={
            "teacher": _model(0.8, rows_per_s=4.0, batch_size=16, parameters=134_515_008, size_bytes=2_000_000),
            "student": _model(0.7, agreement=0.9, kappa=0.8, retention=0.875, speedup=20.0, rows_per_s=80.0, batch_size=32, parameters=22_000_000, size_bytes=90_000_000),
        },
        speed_rows=8, device="cpu", plots=["confusion_student_vs_gold.png"], config="limit: 10\n",
    )
    text = render_report(data)
    assert text.startswith("# Distillery report: sentiment-binary\n")
    assert "Teacher `smollm2` (134.5M params), evaluated on 10 `test` rows" in text
    assert "| student | 0.8000 | 0.7000 | 0.9000 | 0.8000 | 0.8750 | 20.0× |" in text
    assert "| teacher | 0.8000 | 0.5000 | 0.7900 | 0.0500 |" in text
    assert "| student | 80.0000 | 32 | 22,000,000 | 90.0000 |" in text
    assert "![confusion_student_vs_gold](confusion_student_vs_gold.png)" in text
    assert "```yaml\nlimit: 10\n```" in text


def test_report_without_gold_says_so():
    data = ReportData(
        task="t", teacher="smollm2", split="test", n_rows=3, n_failed=0, labels=["neg", "pos"], majority_label=None,
        majority_accuracy=None, models={"teacher": _model(None), "student": _model(None, agreement=0.5, kappa=0.1, retention=None)},
        speed_rows=0, device="cpu", plots=[], config="",
    )
    text = render_report(data)
    assert "No gold labels" in text and "| student | – | – | 0.5000 | 0.1000 | – | – |" in text
