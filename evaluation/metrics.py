"""Metrics that compare predictions with gold labels and with each other."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, precision_recall_fscore_support

__all__ = ["expected_calibration_error", "classification_metrics", "agreement_metrics"]


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


def classification_metrics(probs: np.ndarray, gold: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, ECE and the confusion matrix vs gold."""
    pred = probs.argmax(axis=1)
    ids = list(range(len(labels)))
    p, r, f, support = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
        "ece": expected_calibration_error(probs, gold),
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])} for i, lab in enumerate(labels)},
        "confusion": confusion_matrix(gold, pred, labels=ids).tolist(),
    }


def agreement_metrics(student_pred: np.ndarray, teacher_pred: np.ndarray, n_labels: int) -> dict:
    """How often the student says what the teacher says, and Cohen's κ of the two."""
    ids = list(range(n_labels))
    kappa = cohen_kappa_score(student_pred, teacher_pred, labels=ids)
    return {
        "agreement": float((student_pred == teacher_pred).mean()),
        "kappa": float(0.0 if np.isnan(kappa) else kappa),
        "confusion_vs_teacher": confusion_matrix(teacher_pred, student_pred, labels=ids).tolist(),
    }
