"""Teacher backends behind one small interface, picked by name."""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from distillery.annotate.config import AnnotateConfig
from distillery.annotate.hosted import HostedTeacher
from distillery.annotate.local import Annotation, LocalTeacher
from distillery.core.tasks import TaskSpec

__all__ = ["Teacher", "TeacherKind", "TEACHERS", "build_teacher", "batch_limits", "teacher_batches"]

# Rows and prompt tokens per local teacher call when --teacher-batch-size / --teacher-batch-tokens
# are 0 (automatic). CPU: measured (README, "Teacher batches"). CUDA: sized from the H100 run of
# issue #10 (batch 128 of short SST-2 rows, ~4k tokens, was the fastest measured and still
# rising); not re-measured, as no GPU was lent since.
AUTO_BATCH = {"cpu": (16, 0), "cuda": (512, 8192)}
HOSTED_BATCH = 16  # rows handed to the hosted backend at a time; --concurrency sets requests in flight


class Teacher(Protocol):
    """Anything that turns texts into label log-probabilities."""

    returns_logprobs: bool

    def score(self, texts: list[str]) -> list[Annotation]:
        """One annotation per text; failures are error annotations, never exceptions."""
        ...

    def prompt_lengths(self, texts: list[str]) -> list[int]:
        """The cost of each row in the unit of --teacher-batch-tokens (local: prompt tokens)."""
        ...


class TeacherKind(str, Enum):
    LOCAL = "local"
    OPENAI = "openai"


TEACHERS: dict[TeacherKind, type] = {TeacherKind.LOCAL: LocalTeacher, TeacherKind.OPENAI: HostedTeacher}


def build_teacher(cfg: AnnotateConfig, task: TaskSpec) -> Teacher:
    """Instantiate the backend named by ``cfg.backend``."""
    return TEACHERS[TeacherKind(cfg.backend)](cfg, task)


def batch_limits(cfg: AnnotateConfig) -> tuple[int, int]:
    """``(rows, tokens)`` per teacher call, automatic values resolved (tokens 0: no token cap)."""
    if TeacherKind(cfg.backend) is not TeacherKind.LOCAL:
        return cfg.teacher_batch_size or HOSTED_BATCH, 0
    from distillery.core.models import pick_device

    rows, tokens = AUTO_BATCH[pick_device(cfg.device).type]
    return cfg.teacher_batch_size or rows, cfg.teacher_batch_tokens or tokens


def teacher_batches(lengths: list[int], max_rows: int, max_tokens: int = 0) -> list[list[int]]:
    """Row indices per teacher call, shortest rows first (rows of similar length pad least).

    A batch takes rows while it has fewer than ``max_rows`` and, when ``max_tokens`` is set,
    while ``rows x longest row`` (the padded tensor) stays within it; a row longer than the
    budget goes alone.
    """
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        batch = batches[-1] if batches else None
        fits = batch is not None and len(batch) < max_rows and (not max_tokens or (len(batch) + 1) * lengths[i] <= max_tokens)
        if fits:
            batch.append(i)
        else:
            batches.append([i])
    return batches
