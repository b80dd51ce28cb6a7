"""Typed config of the evaluate stage."""

from __future__ import annotations

from dataclasses import dataclass

from distillery.core.options import check_settings, option
from distillery.core.run import shared


@dataclass
class EvaluateConfig:
    """What is compared: the students in ``students`` against the teacher's annotations and gold."""

    out: str = shared("out")
    annotations: str = shared("annotations")
    students: list[str] = option(
        [],
        "student model dirs, comma-separated (default OUT/student)",
        nonempty=True,
        form="path",
        short="student folders, comma-separated",
        group="input",
    )
    eval_split: str = option(
        "test",
        "which rows to evaluate on: test, train or all",
        choices=("test", "train", "all"),
        short="rows to score: test, train or all",
        group="input",
        shown="common",
    )
    speed_rows: int = option(
        128,
        "rows used to time the student (0 = no timing); the teacher's rows/s is the one annotate recorded",
        ge=0,
        short="rows to time the models on",
        group="evaluation",
    )
    eval_batch_size: int = option(
        32, "student batch size for inference", ge=1, short="student batch size", group="evaluation"
    )
    device: str = shared("device")
    target_agreement: float = option(
        0.95,
        "answer or defer: the lowest confidence threshold at which the student's agreement with the "
        "teacher has a one-sided 95% lower bound >= this is recorded for predict --defer (0 = skip)",
        ge=0.0,
        lt=1.0,
        short="defer: agreement to keep (0 = skip)",
        group="evaluation",
        shown="common",
    )
    push_to_hub: str = option(
        "",
        "after evaluating, upload the (first) student with its model card to this hub repo (needs network and a token)",
        short="upload the student to this hub repo",
        group="evaluation",
        metavar="REPO",
    )

    def __post_init__(self) -> None:
        check_settings(self)  # every field against its declared range, form and choices
        if isinstance(self.students, str):
            self.students = [s.strip() for s in self.students.split(",") if s.strip()]
