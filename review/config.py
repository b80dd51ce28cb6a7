"""Typed config of the review stage."""

from __future__ import annotations

from dataclasses import dataclass

from distillery.core.errors import UserError
from distillery.core.options import check_settings, check_student_folder, option
from distillery.core.run import shared


@dataclass
class ReviewConfig:
    """A review queue of the run's rows for a person to label, or the import of their answers.

    Default: 200 rows, half drawn at random from the evaluation rows (stratified by the teacher's
    label: unbiased estimates of teacher and student accuracy), half the training rows most
    likely to be the teacher's errors (smallest margin between its top two labels, disagreement
    with the student, label issues cleanlab finds on out-of-fold probabilities).
    """

    out: str = shared("out")
    annotations: str = shared("annotations")
    student: str = shared("student")
    review_rows: int = option(
        200,
        "rows in a new review queue (a second call adds this many rows, never the same ones)",
        ge=1,
        short="rows in a new review queue",
        group="review",
    )
    random_share: float = option(
        0.5,
        "share of the queue drawn at random from the evaluation (test) rows, stratified by the teacher's "
        "label; the rest are doubtful training rows",
        ge=0.0,
        le=1.0,
        short="share drawn at random from test rows",
        group="review",
    )
    import_file: str = option(
        "",
        "import a labelled queue instead of building one: a Label Studio JSON export, Argilla records "
        "(JSON, nested or flat) or the queue CSV with its label column filled",
        flag="--import",
        form="path",
        short="import a labelled queue (LS, Argilla, CSV)",
        group="review",
        metavar="FILE",
    )
    seed: int = shared("seed")
    device: str = shared("device")

    def __post_init__(self) -> None:
        check_settings(self)  # every field against its declared range, form and choices
        if not self.out.strip():
            raise UserError("--out: expected the run folder (e.g. data/runs/reviews); found an empty value")
        check_student_folder(self.student, "--student")
