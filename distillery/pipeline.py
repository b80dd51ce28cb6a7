"""``run``: annotate, distill and evaluate in one go, with the run folder locked across the three."""

from __future__ import annotations

from pathlib import Path

from distillery.annotate import AnnotateConfig, annotate
from distillery.core.options import student_folder
from distillery.core.rundir import check_folder, locked
from distillery.distill import DistillConfig, distill
from distillery.evaluation import EvaluateConfig, evaluate
from distillery.evaluation.evaluate import check_report_writable

__all__ = ["run"]


def run(annotation: AnnotateConfig | None = None, training: DistillConfig | None = None,
        evaluation: EvaluateConfig | None = None) -> dict:
    """Annotate, distill and evaluate; returns evaluate's metrics (``metrics.json``).

    Each config defaults to the embedded demo's. The run folder (``annotation.out``) is locked
    for the whole run, and a student folder or report that distillery did not write stops it
    before the first teacher call.
    """
    annotation, training, evaluation = annotation or AnnotateConfig(), training or DistillConfig(), evaluation or EvaluateConfig()
    with locked(annotation.out, "run"):
        check_folder(Path(student_folder(training)), training.overwrite, "--student")
        check_report_writable(evaluation)
        annotate(annotation)
        distill(training, annotation)
        return evaluate(evaluation)
