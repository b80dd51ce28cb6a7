"""What a teacher is: the answer for one row (:class:`Annotation`), the base class every backend's teacher
derives from (:class:`Teacher`), what the run lends it (:class:`TeacherRuntime`), and a backend's registry
entry (:class:`TeacherBackend`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillery.core.annotations import TeacherSpec
from distillery.core.errors import UserError
from distillery.core.options import option

__all__ = [
    "Annotation",
    "Teacher",
    "TeacherBackend",
    "TeacherRuntime",
    "TeacherSpec",
    "model_setting",
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


class Teacher:
    """The base class of a backend's teacher: anything that turns texts into label log-probabilities.

    A backend overrides :meth:`score` and :meth:`prompt_lengths`; the rest have defaults that fit a
    teacher that neither charges nor counts tokens.
    """

    # rows answered so far (this run, earlier runs, every worker): until one is, a teacher may take a
    # failure on every row for a wrong address and stop (the hosted one does)
    answered: int = 0
    # tokens and requests of this run, for the manifest ({"prompt_tokens": ..., ...}); None: not counted
    usage: dict | None = None

    def score(self, texts: list[str]) -> list[Annotation]:
        """One annotation per text; failures are error annotations, never exceptions."""
        raise NotImplementedError

    def prompt_lengths(self, texts: list[str]) -> list[int]:
        """The cost of each row in the unit of --teacher-batch-tokens (local: prompt tokens)."""
        raise NotImplementedError

    def spent(self) -> float:
        """Money spent in this run (a backend that charges: at its configured prices)."""
        return 0.0

    def spec(self) -> TeacherSpec:
        """What the manifest records of this teacher: its model, a description, its size where known (the
        backend's name is filled in by annotate)."""
        return TeacherSpec(description=type(self).__name__)


@dataclass(frozen=True)
class TeacherRuntime:
    """What a run lends its teacher besides the backend's own settings.

    Args:
        device: ``--device`` (auto, cpu, cuda, cuda:N): where a model in this process runs.
        max_prompt_tokens: a longer prompt is an error row, never sent.
        folder: the annotations folder (a backend may keep a cache of answers there).
        restart: ``--restart-annotations``: forget any cache, ask again.
    """

    device: str = "auto"
    max_prompt_tokens: int = 1024
    folder: Path = Path("data/runs/demo/annotations")
    restart: bool = False


def model_setting():
    """The ``teacher`` setting (``--teacher``) of a backend that names a model: one declaration, one help."""
    return option(
        "smollm2",
        "teacher model: 'smollm2' (embedded), a hub id, a local model folder or a .gguf file (--backend local); "
        "the model's name on the server (--backend openai)",
        short="smollm2, hub id, dir, .gguf, served name",
        shown="common",
        metavar="MODEL",
        online="shown",
    )


@dataclass(frozen=True)
class TeacherBackend:
    """One teacher backend, registered in ``teacher_backends`` (``distillery.core.registry``).

    Args:
        summary: one line for --help.
        build: ``(settings, TaskSpec, TeacherRuntime) -> Teacher``: the backend's own settings (its ``settings``
            dataclass, filled), the task, and what the run lends it.
        settings: the dataclass of the backend's own settings (``option()`` fields): the command line
            shows them as a flag group of their own, a config file's keys are checked against them, and
            a setting of another backend is an error naming that backend. None: it has none.
        local: runs a model in this process: --device applies and its batches are sized by device.
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
