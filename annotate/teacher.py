"""What a teacher is: the answer for one row (:class:`Annotation`), the protocol every backend
implements (:class:`Teacher`), and a backend's registry entry (:class:`TeacherBackend`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from distillery.core.errors import UserError

__all__ = [
    "Annotation",
    "Teacher",
    "TeacherBackend",
    "content_free_bias",
    "failed_for_good",
    "normalise",
    "online_backend",
]

# A server's 4xx answers that a later try may pass: timeout, conflict, rate limit (the rest refuse the row itself).
TEMPORARY_4XX = (408, 409, 429)


@dataclass
class Annotation:
    """The teacher's answer for one row.

    ``logprobs`` are natural-log probabilities renormalised over the label set; ``mass`` is
    the probability the label sequences held before renormalising. A failed row has
    ``error_type``/``error_message`` and no logprobs; a hosted teacher that returns no
    log-probs gives only ``hard_label`` (flagged ``no_logprobs``).
    """

    logprobs: list[float] | None = None
    mass: float | None = None
    error_type: str = ""
    error_message: str = ""
    hard_label: str = ""  # set when the teacher gave a label but no log-probs
    flags: str = ""  # e.g. "bounded:positive" (log-prob is an upper bound) or "no_logprobs"


class Teacher(Protocol):
    """Anything that turns texts into label log-probabilities."""

    def score(self, texts: list[str]) -> list[Annotation]:
        """One annotation per text; failures are error annotations, never exceptions."""
        ...

    def prompt_lengths(self, texts: list[str]) -> list[int]:
        """The cost of each row in the unit of --teacher-batch-tokens (local: prompt tokens)."""
        ...


@dataclass(frozen=True)
class TeacherBackend:
    """One teacher backend, registered in ``teacher_backends`` (``distillery.core.registry``).

    Args:
        summary: one line for --help.
        build: ``(AnnotateConfig, TaskSpec) -> Teacher``; the backend's own settings are ``cfg.settings``.
        settings: the dataclass of the backend's own settings (``option()`` fields): the command line
            shows them as a flag group of their own, a config file's keys are checked against them, and
            a setting of another backend is an error naming that backend. None: it has none.
        local: runs a model in this process: --device applies, and annotate records its size on disk.
        online: can score training batches during ``distill --teacher-mode online``.
        batch_rows: rows per teacher call when --teacher-batch-size is 0 (None: by device, AUTO_BATCH).
    """

    summary: str
    build: Callable
    settings: type | None = None
    local: bool = False
    online: bool = False
    batch_rows: int | None = None


def online_backend(name: str) -> TeacherBackend:
    """The registered backend ``name`` where it can score training batches (``distill --teacher-mode online``);
    any other is a one-line :class:`UserError` naming those that can."""
    from distillery.core.registry import teacher_backends

    backend = teacher_backends.get(name)
    if not backend.online:
        able = [n for n in teacher_backends.names() if teacher_backends.get(n).online]
        raise UserError(
            f"teacher_mode online: expected a backend that can score training batches ({', '.join(able)}); "
            f"found --backend {name}; annotate with it first, then distill offline (--teacher-mode offline)"
        )
    return backend


def failed_for_good(error_type: str) -> bool:
    """True for a failure that a rerun would only repeat, so a rerun skips the row unless --retry-failed:
    ``too_long`` (over --max-row-chars) and ``http_4xx``, a row the server refused (4xx other than 408,
    409 and 429). Every other error type (timeouts, 5xx, dropped connections, ...) is retried on every rerun."""
    code = error_type.removeprefix("http_")
    return error_type == "too_long" or (
        code != error_type and code.isdigit() and 400 <= int(code) < 500 and int(code) not in TEMPORARY_4XX
    )


def normalise(raw: list[float]) -> Annotation:
    """Renormalise label log-probs over the label set and keep the mass they held."""
    total = float(np.logaddexp.reduce(np.asarray(raw, dtype=np.float64)))
    if not math.isfinite(total):
        return Annotation(error_type="no_label_mass", error_message="every label has zero probability")
    return Annotation(logprobs=[x - total for x in raw], mass=math.exp(total))


def content_free_bias(teacher: Teacher, inputs: list[str]) -> list[float]:
    """Mean label log-probs on content-free inputs ("N/A", "", ...): Zhao et al. 2021."""
    scored = [a.logprobs for a in teacher.score(inputs) if a.logprobs is not None]
    if not scored:
        raise UserError(
            "content-free calibration: expected log-probs for the content-free inputs; the teacher failed on "
            "every one; "
            "use --calibrate mean, or gold with --label-column"
        )
    return np.mean(np.asarray(scored), axis=0).tolist()
