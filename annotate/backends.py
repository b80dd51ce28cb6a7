"""Teacher backends behind one small interface, picked by name."""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from annotate.config import AnnotateConfig
from annotate.hosted import HostedTeacher
from annotate.local import Annotation, LocalTeacher
from annotate.tasks import TaskSpec

__all__ = ["Teacher", "TeacherKind", "TEACHERS", "build_teacher"]


class Teacher(Protocol):
    """Anything that turns texts into label log-probabilities."""

    returns_logprobs: bool

    def score(self, texts: list[str]) -> list[Annotation]:
        """One annotation per text; failures are error annotations, never exceptions."""
        ...


class TeacherKind(str, Enum):
    LOCAL = "local"
    OPENAI = "openai"


TEACHERS: dict[TeacherKind, type] = {TeacherKind.LOCAL: LocalTeacher, TeacherKind.OPENAI: HostedTeacher}


def build_teacher(cfg: AnnotateConfig, task: TaskSpec) -> Teacher:
    """Instantiate the backend named by ``cfg.backend``."""
    return TEACHERS[TeacherKind(cfg.backend)](cfg, task)
