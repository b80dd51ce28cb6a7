"""Plain-language warnings for a run whose numbers should not be taken as a normal result."""

from __future__ import annotations

__all__ = ["LOW_AGREEMENT", "diagnose"]

LOW_AGREEMENT = 0.75  # below this the student has not learnt its teacher's labels


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
    rows = f"{train_summary['train_rows']} training rows, {train_summary['steps']} optimizer steps" if train_summary else "its training rows"
    teacher_weak = not _above(teacher.get("ci", {}).get("accuracy"), majority)
    if teacher_weak:
        out.append(f"teacher: accuracy {teacher['accuracy']:.4f} is not clearly above the majority baseline {majority:.4f} (always '{label}'): "
                   "its labels teach little. Fit the calibration on gold rows (--calibrate gold, a few hundred rows with --label-column), "
                   "try another prompt (--task) or a stronger --teacher.")
    shares_t, shares_g = teacher.get("label_shares"), metrics.get("gold_shares")
    if shares_t and shares_g:
        gap = 0.5 * sum(abs(shares_t[k] - shares_g[k]) for k in shares_g)
        if gap > 0.15:
            mode = metrics.get("calibration", {}).get("mode", "?")
            out.append(f"teacher: its label shares ({_shares(shares_t)}) are far from gold's ({_shares(shares_g)}), calibration '{mode}'. "
                       "mean and content-free assume balanced labels; use --calibrate auto (mean+em, or gold with >= 50 gold rows).")
    if not _above(student.get("ci", {}).get("accuracy"), majority):
        cause = "the teacher is the likely cause (above)" if teacher_weak else f"likely too little training ({rows})"
        out.append(f"student: accuracy {student['accuracy']:.4f} is not clearly above the majority baseline {majority:.4f}: {cause}. "
                   "Annotate more rows (--limit 0), or run with --learning-curve to see whether more rows would pay.")
    if student["agreement"] < LOW_AGREEMENT:
        out.append(f"student: it agrees with its teacher on only {student['agreement']:.1%} of the rows (κ {student['kappa']:.2f}), so it has "
                   f"not learnt the teacher ({rows}). Give it more rows or steps (--min-steps), or check --learning-curve.")
    return out


def _shares(shares: dict) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
