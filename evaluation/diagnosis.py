"""Plain-language warnings for a run whose numbers should not be taken as a normal result."""

from __future__ import annotations

import math

from distillery.core.annotations import AUTO_MIN_GOLD

__all__ = ["CLASS_RETENTION", "LOW_AGREEMENT", "diagnose"]

LOW_AGREEMENT = 0.75  # below this the student has not learnt its teacher's labels
CLASS_RETENTION = 0.8  # a class whose student F1 is under this share of the teacher's is being dropped
# Teacher-labelled training rows of its smallest class with which the measured students kept every class
# (docs/results.md, "Keep every class": the fewest that did on the sets where smaller ones dropped a class)
KEPT_CLASS_ROWS = 340


def _above(ci: list[float] | None, baseline: float | None) -> bool:
    """Clearly above the baseline: the interval's lower end is over it."""
    return ci is None or baseline is None or ci[0] > baseline


def diagnose(metrics: dict, train_summary: dict | None = None) -> list[str]:
    """Warnings for ``metrics`` (as written to metrics.json), each naming a likely cause and a fix.

    Args:
        metrics: the evaluate stage's metrics (teacher, student, majority baseline, intervals).
        train_summary: the first student's ``train_summary.json`` (rows and steps it trained on).
    """
    out = []
    teacher, student = metrics["teacher"], metrics["student"]
    majority, label = metrics.get("majority_accuracy"), metrics.get("majority_label")
    rows = (
        f"{train_summary['train_rows']} training rows, {train_summary['steps']} optimizer steps"
        if train_summary
        else "its training rows"
    )
    teacher_weak = not _above(teacher.get("ci", {}).get("accuracy"), majority)
    if teacher_weak and metrics.get("calibration", {}).get("mode") == "reviewed":
        out.append(
            f"teacher: accuracy {teacher['accuracy']:.4f} is not clearly above the majority baseline "
            f"{majority:.4f} (always '{label}') "
            "even calibrated on the rows a person reviewed: its labels teach little. Try another prompt "
            "(--task) or a stronger --teacher."
        )
    elif teacher_weak:
        out.append(
            f"teacher: accuracy {teacher['accuracy']:.4f} is not clearly above the majority baseline "
            f"{majority:.4f} (always '{label}'): "
            "its labels teach little. Fit the calibration on gold rows: have a person label 200 of them "
            "('distillery review', "
            "then --import their answers and rerun), or pass a few hundred with --label-column; or try "
            "another prompt (--task) "
            "or a stronger --teacher."
        )
    shares_t, shares_g = teacher.get("label_shares"), metrics.get("gold_shares")
    if shares_t and shares_g:
        gap = 0.5 * sum(abs(shares_t[k] - shares_g[k]) for k in shares_g)
        if gap > 0.15:
            out.append(_shares_advice(metrics.get("calibration", {}), shares_t, shares_g))
    if not _above(student.get("ci", {}).get("accuracy"), majority):
        cause = "the teacher is the likely cause (above)" if teacher_weak else f"likely too little training ({rows})"
        out.append(
            f"student: accuracy {student['accuracy']:.4f} is not clearly above the majority baseline "
            f"{majority:.4f}: {cause}. "
            "Annotate more rows (--limit 0), or run with --learning-curve to see whether more rows would pay."
        )
    untellable = student.get("untellable_classes") or []
    for label in untellable:
        f1_t, share = teacher["per_class"][label]["f1"], (metrics.get("gold_shares") or {}).get(label)
        out.append(
            f"teacher: class '{label}' F1 {f1_t:.3f} is below that of always answering it"
            + (f" ({2 * share / (1 + share):.3f} at its share {share:.1%})" if share is not None else "")
            + ": the teacher cannot tell it, so the student is not judged on copying it. Calibrate the teacher "
            "on gold rows (--calibrate gold), review rows of that class, or use a stronger teacher."
        )
    for label, kept in sorted((student.get("class_f1_retention") or {}).items(), key=lambda kv: kv[1]):
        if kept < CLASS_RETENTION and label not in untellable:
            f1_s, f1_t = student["per_class"][label]["f1"], teacher["per_class"][label]["f1"]
            out.append(
                f"student: class '{label}' F1 {f1_s:.3f} against the teacher's {f1_t:.3f} ({kept:.2f}×, "
                f"under {CLASS_RETENTION}×): "
                f"the student is dropping it. {_dropped_advice(train_summary)}{_rows_needed(train_summary, label)}"
            )
    if student["agreement"] < LOW_AGREEMENT:
        out.append(
            f"student: it agrees with its teacher on only {student['agreement']:.1%} of the rows (κ "
            f"{student['kappa']:.2f}), so it has "
            f"not learnt the teacher ({rows}). Give it more rows or steps (--min-steps), or check --learning-curve."
        )
    return out


def _dropped_advice(train_summary: dict | None) -> str:
    """What to run next for a dropped class: weights first unless the rows were weighted, else more rows of it."""
    more_rows = (
        "give it more rows of that class (a larger --limit, or gold labels with --hard-labels gold where you "
        "have them) "
        "and compare macro-F1, not accuracy alone."
    )
    if (train_summary or {}).get("class_weights"):
        return "It was trained with each class weighted the same; " + more_rows
    unweighted = (
        "Its training rows were not weighted by class (auto weights them only while the smallest class has few rows). "
        if train_summary is not None and "class_weights" in train_summary
        else ""
    )
    return unweighted + "Distil again with --class-weights balanced, or " + more_rows


def _rows_needed(train_summary: dict | None, label: str) -> str:
    """How many more teacher-labelled rows, at the class's share, would give it KEPT_CLASS_ROWS training rows."""
    counts = (train_summary or {}).get("train_label_counts") or {}
    have, total = counts.get(label), sum(counts.values())
    if have is None or not total or have >= KEPT_CLASS_ROWS:
        return ""
    share = have / total
    more = (
        f"about {math.ceil((KEPT_CLASS_ROWS - have) / share):,} more rows at its share ({share:.1%})"
        if have
        else "rows"
    )
    return (
        f" Its training rows hold {have} of it by the teacher's labels; students here kept every class from "
        f"{KEPT_CLASS_ROWS} (docs/results.md): {more} would get there, fewer if 'distillery active --strategy "
        "rare' picks them."
    )


def _shares_advice(calibration: dict, shares_t: dict, shares_g: dict) -> str:
    """The warning for a teacher whose label shares are far from gold's, with advice that fits the mode auto chose."""
    mode, requested = calibration.get("mode", "?"), calibration.get("requested", calibration.get("mode", "?"))
    head = (
        f"teacher: its label shares ({_shares(shares_t)}) are far from gold's ({_shares(shares_g)}), "
        f"calibration '{mode}'"
    )
    head += " (chosen by --calibrate auto). " if requested == "auto" else ". "
    if mode == "reviewed":
        return head + (
            "It was fitted on the rows a person reviewed: review another round ('distillery review' adds "
            "rows it has not "
            "shown before) and import the answers."
        )
    if mode == "gold":
        fitted = calibration.get("fitted_on", "?")
        return head + (
            f"It was fitted on {fitted} gold rows outside the test split: if those rows are drawn like the "
            "test rows, fit on "
            "more of them (--calibrate-on N); if not (another source or period), label a random sample of "
            "this data and "
            "pass it with --label-column."
        )
    return head + (
        "It assumes balanced labels. Have a person label 200 rows ('distillery review', then --import their answers: "
        f"auto fits on them from {AUTO_MIN_GOLD}), or pass gold labels with --label-column; without either: "
        "--calibrate "
        "mean+gmm or content-free+gmm estimate the label prior."
    )


def _shares(shares: dict) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
