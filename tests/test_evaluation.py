"""Metrics on hand-checked cases, and the report rendered from its dataclass and template."""

import numpy as np
import pytest

from distillery.evaluation import (
    ReportData,
    agreement_metrics,
    classification_metrics,
    expected_calibration_error,
    render_report,
)
from distillery.evaluation.diagnosis import diagnose
from distillery.evaluation.metrics import bootstrap_intervals, class_retention


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
    return {
        "accuracy": acc,
        "macro_f1": None if acc is None else acc - 0.01,
        "ece": 0.05,
        "per_class": {"neg": {"f1": 0.5}, "pos": {"f1": 0.6}},
        **extra,
    }


def test_report_renders_every_section():
    data = ReportData(
        task="sentiment-binary",
        teacher="smollm2",
        split="test",
        n_rows=10,
        n_failed=1,
        labels=["neg", "pos"],
        majority_label="neg",
        majority_accuracy=0.5,
        models={
            "teacher": _model(0.8, rows_per_s=4.0, batch_size=16, parameters=134_515_008, size_bytes=2_000_000),
            "student": _model(
                0.7,
                agreement=0.9,
                kappa=0.8,
                retention=0.875,
                speedup=20.0,
                rows_per_s=80.0,
                batch_size=32,
                parameters=22_000_000,
                size_bytes=90_000_000,
                macro_f1_retention=0.8734,
                worst_class="neg",
                worst_class_retention=0.75,
            ),
        },
        speed_rows=8,
        device="cpu",
        plots=["confusion_student_vs_gold.png"],
        config="limit: 10\n",
    )
    text = render_report(data)
    assert text.startswith("# Distillery report: sentiment-binary\n")
    assert "Teacher `smollm2` (134.5M params), evaluated on 10 `test` rows" in text
    assert "| student | 0.8000 | 0.7000 | 0.9000 | 0.8000 | 0.8750 | 0.8734 | 0.7500 (neg) | 20.0× |" in text
    assert "| teacher | 0.8000 | 0.5000 | 0.7900 | 0.0500 |" in text
    assert "| student | 80.0000 | 32 | 22,000,000 | 90.0000 |" in text
    assert "![confusion_student_vs_gold](confusion_student_vs_gold.png)" in text
    assert "```yaml\nlimit: 10\n```" in text


def test_report_without_gold_says_so():
    data = ReportData(
        task="t",
        teacher="smollm2",
        split="test",
        n_rows=3,
        n_failed=0,
        labels=["neg", "pos"],
        majority_label=None,
        majority_accuracy=None,
        models={"teacher": _model(None), "student": _model(None, agreement=0.5, kappa=0.1, retention=None)},
        speed_rows=0,
        device="cpu",
        plots=[],
        config="",
    )
    text = render_report(data)
    assert "No gold labels" in text and "| student | – | – | 0.5000 | 0.1000 | – | – |" in text


def test_bootstrap_intervals_cover_the_truth_with_the_binomial_width():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 400)
    teacher = np.where(rng.random(400) < 0.8, gold, 1 - gold)  # 80% right
    student = np.where(rng.random(400) < 0.9, teacher, 1 - teacher)  # agrees on ~90%
    ci = bootstrap_intervals(teacher, student, gold, 2)
    s_acc, t_acc = (student == gold).mean(), (teacher == gold).mean()
    for key, value in (
        ("student_accuracy", s_acc),
        ("teacher_accuracy", t_acc),
        ("agreement", (student == teacher).mean()),
        ("retention", s_acc / t_acc),
    ):
        assert ci[key][0] < value < ci[key][1], key
    width = ci["teacher_accuracy"][1] - ci["teacher_accuracy"][0]
    assert width == pytest.approx(2 * 1.96 * np.sqrt(t_acc * (1 - t_acc) / 400), rel=0.2)
    same = bootstrap_intervals(teacher, teacher, None, 2)
    assert same["agreement"] == [1.0, 1.0] and same["kappa"][0] == pytest.approx(1.0) and "retention" not in same


def _metrics(teacher_acc, student_acc, agreement, teacher_shares=None):
    return {
        "majority_label": "pos",
        "majority_accuracy": 0.72,
        "calibration": {"mode": "mean"},
        "gold_shares": {"neg": 0.28, "pos": 0.72},
        "teacher": {
            "accuracy": teacher_acc,
            "ci": {"accuracy": [teacher_acc - 0.04, teacher_acc + 0.04]},
            "label_shares": teacher_shares or {"neg": 0.3, "pos": 0.7},
        },
        "student": {
            "accuracy": student_acc,
            "agreement": agreement,
            "kappa": 0.14,
            "ci": {"accuracy": [student_acc - 0.05, student_acc + 0.05]},
        },
    }


def test_warnings_name_the_problem_and_the_fix():
    assert diagnose(_metrics(0.90, 0.88, 0.93)) == []
    # The review set: the student below the majority class and far from its teacher.
    found = diagnose(_metrics(0.90, 0.595, 0.571), {"train_rows": 491, "steps": 93})
    assert len(found) == 2
    assert (
        "student: accuracy 0.5950 is not clearly above the majority baseline 0.7200" in found[0]
        and "491 training rows, 93 optimizer steps" in found[0]
    )
    assert "--learning-curve" in found[0] and "57.1%" in found[1] and "--min-steps" in found[1]
    # A teacher pushed to 50/50 on a 72/28 set, and one no better than the majority class.
    shares = diagnose(_metrics(0.743, 0.80, 0.9, {"neg": 0.5, "pos": 0.5}))
    assert len(shares) == 2 and "not clearly above the majority" in shares[0] and "calibration 'mean'" in shares[1]
    assert "It assumes balanced labels" in shares[1] and "--label-column" in shares[1] and "mean+gmm" in shares[1]
    # auto already chose gold: the advice is about the gold rows, not "use auto".
    gold = _metrics(0.743, 0.80, 0.9, {"neg": 0.5, "pos": 0.5})
    gold["calibration"] = {"mode": "gold", "requested": "auto", "fitted_on": 120}
    advice = [w for w in diagnose(gold) if "label shares" in w][0]
    assert "calibration 'gold' (chosen by --calibrate auto)" in advice and "fitted on 120 gold rows" in advice
    assert "--calibrate auto" not in advice.replace("(chosen by --calibrate auto)", "")


def test_class_retention_and_the_warning_for_a_dropped_class():
    teacher = {"macro_f1": 0.739, "per_class": {"negative": {"f1": 0.600}, "positive": {"f1": 0.878}}}
    student = {"macro_f1": 0.666, "per_class": {"negative": {"f1": 0.463}, "positive": {"f1": 0.869}}}
    kept = class_retention(student, teacher)  # the binary reviews: negative 0.600 -> 0.463
    assert kept["macro_f1_retention"] == pytest.approx(0.666 / 0.739) and kept["worst_class"] == "negative"
    assert kept["worst_class_retention"] == pytest.approx(0.463 / 0.600)
    assert class_retention({"macro_f1": None}, teacher)["worst_class"] is None
    metrics = _metrics(0.813, 0.790, 0.9)
    metrics["teacher"].update(teacher)
    metrics["student"].update(student, **kept)
    found = [w for w in diagnose(metrics) if "class '" in w]
    assert len(found) == 1 and "class 'negative' F1 0.463 against the teacher's 0.600 (0.77×" in found[0]
    # The advice follows what distill did: weights when it used none, more rows of the class when it did.
    unweighted = [
        w for w in diagnose(metrics, {"train_rows": 500, "steps": 300, "class_weights": None}) if "class '" in w
    ][0]
    assert "were not weighted by class" in unweighted and "--class-weights balanced" in unweighted
    weighted = [
        w
        for w in diagnose(
            metrics, {"train_rows": 500, "steps": 300, "class_weights": {"negative": 2.0, "positive": 0.67}}
        )
        if "class '" in w
    ][0]
    assert "--class-weights" not in weighted and "more rows of that class" in weighted
    # How many more teacher-labelled rows: 30 of 500 are negative (6%); 340 would need (340 - 30) / 0.06 more.
    counts = {
        "train_rows": 500,
        "steps": 300,
        "class_weights": None,
        "train_label_counts": {"negative": 30, "positive": 470},
    }
    few = [w for w in diagnose(metrics, counts) if "class '" in w][0]
    assert "hold 30 of it" in few and "about 5,167 more rows at its share (6.0%)" in few, few
    counts["train_label_counts"] = {"negative": 400, "positive": 600}  # already as many as the kept runs had
    assert "more rows at its share" not in [w for w in diagnose(metrics, counts) if "class '" in w][0]
    metrics["student"]["per_class"]["negative"]["f1"] = 0.55  # 0.92×: kept
    metrics["student"].update(class_retention(metrics["student"], teacher))
    assert not [w for w in diagnose(metrics) if "class '" in w]


def test_report_shows_intervals_warnings_and_the_learning_curve():
    data = ReportData(
        task="t",
        teacher="smollm2",
        split="test",
        n_rows=10,
        n_failed=0,
        labels=["neg", "pos"],
        majority_label="pos",
        majority_accuracy=0.72,
        models={
            "teacher": _model(0.8, ci={"accuracy": [0.7, 0.9]}),
            "student": _model(
                0.6,
                agreement=0.57,
                kappa=0.14,
                retention=0.75,
                ci={"accuracy": [0.5, 0.7], "agreement": [0.47, 0.67], "kappa": [0.0, 0.3], "retention": [0.6, 0.9]},
            ),
        },
        speed_rows=0,
        device="cpu",
        plots=[],
        config="",
        warnings=["student: it agrees with its teacher on only 57.0% of the rows"],
        learning_curve=[
            {"train_rows": 100, "steps": 300, "accuracy": 0.55, "agreement": 0.5},
            {"train_rows": 400, "steps": 300, "accuracy": 0.6, "agreement": 0.57},
        ],
    )
    text = render_report(data)
    assert (
        "| student | 0.8000 [0.7000, 0.9000] | 0.6000 [0.5000, 0.7000] | 0.5700 [0.4700, 0.6700] | 0.1400 "
        "[0.0000, 0.3000] | 0.7500 [0.6000, 0.9000] | – | – | – |" in text
    )
    assert "- **Warning** – student: it agrees with its teacher on only 57.0% of the rows" in text
    assert "| 100 | 300 | 0.5500 | 0.5000 |" in text and "| 400 | 300 | 0.6000 | 0.5700 |" in text


def test_a_class_the_teacher_cannot_tell_is_named_and_never_the_worst_class():
    """Issue #38: a teacher whose F1 on a class is under always answering it (2p / (1 + p) for a share
    p) cannot tell that class; retention names it and judges the student on the others."""
    from distillery.evaluation.diagnosis import diagnose
    from distillery.evaluation.metrics import class_retention, classification_metrics, untellable_classes

    labels = ["negative", "neutral", "positive"]
    gold = np.repeat([0, 1, 2], [30, 40, 30])
    teacher_pred = gold.copy()
    teacher_pred[30:70] = np.where(np.arange(40) % 4 == 0, 1, 2)  # neutral: 10 of 40 found, 30 called positive
    student_pred = gold.copy()
    student_pred[30:70] = 2  # the student never says neutral
    student_pred[:6] = 2  # and misses 6 negatives
    teacher, student = (classification_metrics(np.eye(3)[p], gold, labels) for p in (teacher_pred, student_pred))
    always = 2 * 0.4 / 1.4
    assert teacher["per_class"]["neutral"]["f1"] < always < teacher["per_class"]["positive"]["f1"]
    assert untellable_classes(teacher) == ["neutral"]
    kept = class_retention(student, teacher)
    assert kept["untellable_classes"] == ["neutral"] and kept["class_f1_retention"]["neutral"] == 0.0
    others = {k: v for k, v in kept["class_f1_retention"].items() if k != "neutral"}
    assert kept["worst_class"] == min(others, key=others.get) and kept["worst_class_retention"] > 0
    notes = diagnose(
        {
            "teacher": teacher,
            "student": {**student, **kept, "agreement": 0.9, "kappa": 0.8},
            "majority_accuracy": 0.4,
            "gold_shares": {"negative": 0.3, "neutral": 0.4, "positive": 0.3},
        },
        None,
    )
    assert any("class 'neutral'" in n and "cannot tell it" in n for n in notes)
    assert not any("class 'neutral'" in n and "dropping it" in n for n in notes)
    fair = classification_metrics(np.eye(3)[gold], gold, labels)
    assert untellable_classes(fair) == []
