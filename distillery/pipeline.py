"""``run``: annotate, distill and evaluate in one go, with the run folder locked across the three."""

from __future__ import annotations

from pathlib import Path

from distillery.annotate import AnnotateConfig, annotate, load_rows, load_task
from distillery.core.errors import UserError
from distillery.core.lock import locked
from distillery.core.run import Run
from distillery.core.rundir import check_folder
from distillery.distill import DistillConfig, distill
from distillery.evaluation import EvaluateConfig, evaluate
from distillery.evaluation.evaluate import check_report_writable

__all__ = ["check_inputs", "run"]


def run(
    annotation: AnnotateConfig | None = None,
    training: DistillConfig | None = None,
    evaluation: EvaluateConfig | None = None,
) -> dict:
    """Annotate, distill and evaluate; returns evaluate's metrics (``metrics.json``).

    Each config defaults to the embedded demo's. The run folder (``annotation.out``) is locked
    for the whole run; a student folder or report that distillery did not write, or rows that
    cannot serve distill and evaluate (:func:`check_inputs`), stop it before the first teacher call.
    """
    annotation, training, evaluation = (
        annotation or AnnotateConfig(),
        training or DistillConfig(),
        evaluation or EvaluateConfig(),
    )
    with locked(annotation.out, "run"):
        check_folder(Run.of(training).student, training.overwrite, "--student")
        check_report_writable(evaluation)
        check_inputs(annotation, training, evaluation)
        annotate(annotation)
        distill(training, annotation)
        return evaluate(evaluation)


def check_inputs(annotation: AnnotateConfig, training: DistillConfig, evaluation: EvaluateConfig) -> None:
    """What the inputs already tell before the first teacher call, each a failure after annotate and
    distill otherwise: the rows annotate will select (read as it reads them) hold the rows evaluate
    scores (``--eval-split``) and at least 2 training rows (with gold labels for ``--hard-labels gold``);
    the learning curve's student folders and the students evaluate compares are there to write or read.
    Rows the teacher fails on are not knowable here."""
    student = Run.of(training).student
    if training.learning_curve:
        for share in (25, 50):
            check_folder(Run.of(training).share_student(f"{share}pct"), training.overwrite, "--student")
    for path in evaluation.students:
        if Path(path).resolve() != student.resolve() and not Path(path).is_dir():
            raise UserError(
                f"evaluate compares --students {','.join(evaluation.students)}; expected saved student "
                "folders (or the one "
                f"distill writes, {student}); found no folder {path}; pass saved students, or leave --students out"
            )
    rows = load_rows(annotation, load_task(annotation.task, annotation.labels or None).labels)
    annotated = Run.of(annotation).annotations.resolve()
    how = (
        f"--split-column {annotation.split_column}"
        if annotation.split_column
        else f"--test-fraction {annotation.test_fraction:g}"
    )
    split = evaluation.eval_split
    evaluated = Run.of(evaluation).annotations.resolve() == annotated
    if evaluated and split != "all" and not (rows["split"] == split).any():
        fix = (
            f"mark rows '{split}' in column '{annotation.split_column}'"
            if annotation.split_column
            else "raise --test-fraction"
            if split == "test"
            else "lower --test-fraction"
        )
        raise UserError(
            f"evaluate scores the {split} rows (--eval-split {split}); expected at least one among the {len(rows)} "
            f"rows to annotate; found none ({how}); {fix}, or pass --eval-split all"
        )
    if training.teacher_mode == "online" or Run.of(training).annotations.resolve() == annotated:
        train = rows[rows["split"] == "train"]
        train = train.head(training.max_train_rows) if training.max_train_rows else train
        if len(train) < 2:
            raise UserError(
                f"distill trains on the train rows; expected at least 2 among the {len(rows)} rows to annotate; "
                f"found {len(train)} ({how}); lower --test-fraction, or annotate more rows"
            )
        if training.hard_labels == "gold" and (train["gold"] == "").any():
            raise UserError(
                "--hard-labels gold: expected a gold label in every training row; found none in the input; "
                "pass --label-column, or use --hard-labels auto"
            )
