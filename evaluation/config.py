"""Typed config of the evaluate stage."""

from __future__ import annotations

from dataclasses import dataclass

from distillery.core.options import check_finite, option
from distillery.core.errors import UserError


@dataclass
class EvaluateConfig:
    """What is compared: the students in ``students`` against the teacher's annotations and gold."""

    out: str = option("data/runs/demo", "run directory; the report goes to OUT/report.md")
    annotations: str = option("", "annotations dir with the teacher's labels and gold (default OUT/annotations)")
    students: list[str] = option([], "student model dirs, comma-separated (default OUT/student)", nonempty=True)
    eval_split: str = option("test", "which rows to evaluate on: test, train or all")
    speed_rows: int = option(128, "rows used to time student and teacher (0 = skip the teacher timing)")
    eval_batch_size: int = option(32, "student batch size for inference")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    overwrite: bool = option(False, "replace report.md, metrics.json and plots in OUT that distillery did not write")
    target_agreement: float = option(0.95, "answer or defer: the lowest confidence threshold at which the student's agreement with the "
                                           "teacher has a one-sided 95% lower bound >= this is recorded for predict --defer (0 = skip)")
    push_to_hub: str = option("", "after evaluating, upload the (first) student with its model card to this hub repo (needs network and a token)")

    def __post_init__(self) -> None:
        check_finite(self)
        if isinstance(self.students, str):
            self.students = [s.strip() for s in self.students.split(",") if s.strip()]
        if self.eval_split not in ("test", "train", "all"):
            raise UserError(f"eval_split: expected test, train or all, found '{self.eval_split}'")
        if not 0.0 <= self.target_agreement < 1.0:
            raise UserError(f"target_agreement: expected 0 <= x < 1 (0 = skip), found {self.target_agreement}")
        if self.speed_rows < 0 or self.eval_batch_size < 1:
            raise UserError("speed_rows: expected >= 0; eval_batch_size: expected >= 1")
