"""Metrics that compare predictions with gold labels and with each other."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

__all__ = [
    "agreement_metrics",
    "bootstrap_intervals",
    "class_retention",
    "classification_metrics",
    "expected_calibration_error",
    "stratified_accuracy",
]


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy, over equal-width bins.

    Args:
        probs: ``(n, n_labels)`` predicted probabilities.
        gold: ``(n,)`` gold label ids.
        n_bins: number of confidence bins on [0, 1].
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, gold: np.ndarray, n_bins: int = 10) -> list[dict]:
    """The reliability diagram's points: per non-empty confidence bin, mean confidence, accuracy and rows."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == gold
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    return [
        {
            "confidence": float(confidence[bins == b].mean()),
            "accuracy": float(correct[bins == b].mean()),
            "rows": int((bins == b).sum()),
        }
        for b in range(n_bins)
        if (bins == b).any()
    ]


def classification_metrics(probs: np.ndarray, gold: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, ECE and the confusion matrix vs gold."""
    pred = probs.argmax(axis=1)
    ids = list(range(len(labels)))
    p, r, f, support = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
        "ece": expected_calibration_error(probs, gold),
        "reliability": reliability_bins(probs, gold),
        "per_class": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, lab in enumerate(labels)
        },
        "confusion": confusion_matrix(gold, pred, labels=ids).tolist(),
    }


def class_retention(student: dict, teacher: dict) -> dict:
    """Macro-F1 retention and each class's F1 retention (student ÷ teacher), the worst class named.

    A class the teacher never gets right (F1 0) has no retention; ``None`` everywhere without gold. A
    class the teacher cannot tell (:func:`untellable_classes`) keeps its retention but is never the worst:
    no student is held to copying a teacher that guesses.
    """
    if student.get("macro_f1") is None or not teacher.get("macro_f1"):
        return {
            "macro_f1_retention": None,
            "class_f1_retention": None,
            "worst_class": None,
            "worst_class_retention": None,
            "untellable_classes": [],
        }
    per_class = {
        lab: student["per_class"][lab]["f1"] / t["f1"] for lab, t in teacher["per_class"].items() if t["f1"] > 0
    }
    untellable = untellable_classes(teacher)
    judged = {lab: kept for lab, kept in per_class.items() if lab not in untellable}
    worst = min(judged, key=judged.get) if judged else None
    return {
        "macro_f1_retention": student["macro_f1"] / teacher["macro_f1"],
        "class_f1_retention": per_class,
        "worst_class": worst,
        "worst_class_retention": per_class.get(worst),
        "untellable_classes": untellable,
    }


def untellable_classes(teacher: dict) -> list[str]:
    """The classes the teacher cannot tell: its F1 on the class is below that of always answering it,
    ``2p / (1 + p)`` for a class with share p of the gold rows."""
    support = {lab: m.get("support", 0) for lab, m in teacher["per_class"].items()}
    total = sum(support.values()) or 1
    return [
        lab
        for lab, m in teacher["per_class"].items()
        if support[lab] and m["f1"] < 2 * (support[lab] / total) / (1 + support[lab] / total)
    ]


def agreement_metrics(student_pred: np.ndarray, teacher_pred: np.ndarray, n_labels: int) -> dict:
    """How often the student says what the teacher says, and Cohen's κ of the two."""
    ids = list(range(n_labels))
    kappa = cohen_kappa_score(student_pred, teacher_pred, labels=ids)
    return {
        "agreement": float((student_pred == teacher_pred).mean()),
        "kappa": float(0.0 if np.isnan(kappa) else kappa),
        "confusion_vs_teacher": confusion_matrix(teacher_pred, student_pred, labels=ids).tolist(),
    }


def _kappa(a: np.ndarray, b: np.ndarray, n_labels: int) -> float:
    """Cohen's κ from two label arrays (the same formula as sklearn, vectorised for the bootstrap)."""
    joint = np.bincount(a * n_labels + b, minlength=n_labels * n_labels).reshape(n_labels, n_labels) / len(a)
    expected = joint.sum(1) @ joint.sum(0)
    return 0.0 if expected == 1 else float((np.trace(joint) - expected) / (1 - expected))


def bootstrap_intervals(
    teacher_pred: np.ndarray,
    student_pred: np.ndarray,
    gold: np.ndarray | None,
    n_labels: int,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap intervals of a student's metrics, resampling rows (paired).

    Every resample draws the same rows for teacher, student and gold, so retention (student
    accuracy / teacher accuracy) gets an interval of its own, not a ratio of two intervals.

    Args:
        teacher_pred, student_pred: ``(n,)`` label ids.
        gold: ``(n,)`` gold label ids, or None (then only agreement and κ).
        n_labels: size of the label set.
        resamples: bootstrap resamples; level: coverage of the interval.

    Returns:
        ``{metric: [low, high]}`` for agreement, kappa and, with gold, teacher_accuracy,
        student_accuracy and retention.
    """
    rng = np.random.default_rng(seed)
    n = len(student_pred)
    draws: dict[str, list[float]] = {"agreement": [], "kappa": []}
    if gold is not None:
        draws.update(teacher_accuracy=[], student_accuracy=[], retention=[])
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        t, s = teacher_pred[idx], student_pred[idx]
        draws["agreement"].append(float((t == s).mean()))
        draws["kappa"].append(_kappa(s, t, n_labels))
        if gold is not None:
            t_acc, s_acc = float((t == gold[idx]).mean()), float((s == gold[idx]).mean())
            draws["teacher_accuracy"].append(t_acc)
            draws["student_accuracy"].append(s_acc)
            draws["retention"].append(s_acc / t_acc if t_acc else np.nan)
    tail = 100 * (1 - level) / 2
    return {k: [float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100 - tail))] for k, v in draws.items()}


def stratified_accuracy(
    correct: np.ndarray, sample_strata: np.ndarray, population_strata: np.ndarray, z: float = 1.96
) -> dict:
    """Accuracy over a population estimated from a sample, post-stratified, with a 95% interval.

    Args:
        correct: ``(n,)`` whether each sampled row was right.
        sample_strata: ``(n,)`` each sampled row's stratum (the teacher's label).
        population_strata: ``(N,)`` the stratum of every row of the population (the evaluation rows).

    The estimate weights each stratum's sample accuracy by the stratum's share of the population
    (strata nobody reviewed share the others' weight); its variance is the stratified one with the
    finite-population correction, each stratum's accuracy taken as ``(right + 1) / (rows + 2)``
    (Agresti-Coull) so a stratum reviewed all right still has a width. Returns ``{"estimate",
    "low", "high", "rows", "covered"}`` (Nones without a sampled row); ``covered`` is the share of
    the population in strata with a sampled row (below 1 the estimate leaves some strata out).
    """
    correct, sample_strata = np.asarray(correct, dtype=float), np.asarray(sample_strata)
    if len(correct) == 0:
        return {"estimate": None, "low": None, "high": None, "rows": 0, "covered": 0.0}
    names, sizes = np.unique(population_strata, return_counts=True)
    seen = [(s, N) for s, N in zip(names, sizes) if (sample_strata == s).any()]
    total = sum(N for _, N in seen)
    estimate, variance = 0.0, 0.0
    for s, N in seen:
        x = correct[sample_strata == s]
        n, w = len(x), N / total
        p_adj = (x.sum() + 1) / (n + 2)
        estimate += w * x.mean()
        variance += w**2 * p_adj * (1 - p_adj) / n * max(0.0, 1 - n / N)
    half = z * np.sqrt(variance)
    return {
        "estimate": float(estimate),
        "low": float(max(0.0, estimate - half)),
        "high": float(min(1.0, estimate + half)),
        "rows": int(len(correct)),
        "covered": float(total / len(population_strata)),
    }
