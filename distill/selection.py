"""Which validation pass's weights distill keeps: the keep-the-best rule, on numbers alone (no torch).

A pass agreeing with the hard labels at least as often as always answering their most common label
beats one below that; among passes of the same kind, distill keeps the last one whose loss the
validation rows cannot tell from the lowest (paired, row by row). docs/usage.md ("Every class") says
why, with the measurements.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KEPT", "better", "keep", "majority_warning", "select"]


# what progress keeps of a validation pass
KEPT = ("step", "val_loss", "val_row_loss", "val_accuracy", "val_majority", "at_least_majority")


def select(progress: dict, record: dict, row_losses: np.ndarray, first_step: float = 0) -> bool:
    """Note a validation pass in ``progress`` (its ``lowest`` pass so far, see :func:`better`); True when
    its weights are to be kept (:func:`keep`; ``progress["best"]`` is then this pass). A pass before
    ``first_step`` (``--keep-from``) is neither noted nor kept."""
    if record["step"] < first_step:
        return False
    record["val_row_loss"] = float(row_losses.mean())  # what keep() compares row by row (class weights as trained)
    if "lowest" not in progress and progress.get("best"):  # a checkpoint written before row losses were kept
        progress["lowest"] = dict(progress["best"])  # no row losses: a later pass must beat its loss
    if better(record, progress.get("lowest")):
        progress["lowest"] = {**{k: record[k] for k in KEPT}, "row_losses": row_losses.tolist()}
    if not keep(record, row_losses, progress["lowest"]):
        return False
    progress["best"] = {**{k: record[k] for k in KEPT}, "lowest_step": progress["lowest"].get("step")}
    return True


def better(record: dict, lowest: dict | None) -> bool:
    """Whether the validation ``record`` is the new ``lowest``: a pass that agrees with the hard labels at
    least as often as always answering their most common label beats one below that (on 50 noisy rows
    the lowest loss can fall on a step whose student answers worse than the majority label); between
    two of the same kind, the lower validation loss wins."""
    if lowest is None:
        return True
    above, lowest_above = record.get("at_least_majority", True), lowest.get("at_least_majority", True)
    key = "val_row_loss" if "val_row_loss" in record and "val_row_loss" in lowest else "val_loss"
    return above > lowest_above or (above == lowest_above and record[key] < lowest[key])


def keep(record: dict, row_losses: np.ndarray, lowest: dict) -> bool:
    """Whether to keep the weights of this (latest) validation pass: it is of the same kind as the
    ``lowest`` (see :func:`better`) and its loss is within one standard error of the lowest one's,
    row by row (paired). So the student kept is the last pass the validation rows cannot tell from
    the best: on a few dozen rows the lowest loss often falls on an early, barely trained step
    (docs/usage.md, "Every class", gives the measurements), while a later pass has seen every row
    more often at a lower learning rate. A later pass clearly worse than the lowest
    (overfitting) is not kept."""
    if record.get("at_least_majority", True) != lowest.get("at_least_majority", True):
        return False
    if "row_losses" not in lowest:  # carried over from an older checkpoint
        return record["val_loss"] < lowest["val_loss"]
    diff = row_losses - np.asarray(lowest["row_losses"])
    error = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return bool(diff.mean() <= error)


def majority_warning(best: dict | None) -> str | None:
    """One line when the kept student agrees with its hard labels less often than always answering their
    most common label would, naming what to try; None otherwise."""
    if not best or best.get("at_least_majority", True):
        return None
    return (
        f"distill: warning: the student agrees with its hard labels on {best['val_accuracy']:.1%} of the "
        f"validation rows, less than always answering the most common label would ({best['val_majority']:.1%}); "
        "try more training rows, more --epochs or --min-steps, --class-weights none, or a larger --student-model"
    )
