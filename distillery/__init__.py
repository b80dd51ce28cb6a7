"""Distillery: turn a big LLM's judgement into a small, fast classifier.

The public API (imported on first use, so ``import distillery`` stays light)::

    import distillery

    distillery.annotate(distillery.AnnotateConfig(out="data/runs/api", limit=60))   # teacher labels + log-probs
    distillery.distill(distillery.DistillConfig(out="data/runs/api"))               # a student from them
    metrics = distillery.evaluate(distillery.EvaluateConfig(out="data/runs/api"))   # student vs teacher vs gold
    student = distillery.load_student("data/runs/api/student")
    student.predict(["what a lovely day"])                                         # ['positive']

Like the command line, the API keeps the terminal to Distillery's own lines and bars (it turns
off transformers' per-load progress bars and info logs on first use;
``transformers.logging.set_verbosity_warning()`` undoes it). ``run`` does the first three in one go; ``predict`` and
``export`` work on a saved student;
``active`` is the active-distillation loop; ``review`` writes a queue of rows for a person to
label and imports their answers. The four extension points are registries:
``student_kinds``, ``teacher_backends``, ``calibration_modes`` and ``active_strategies``, with the
base types ``StudentKind``, ``TeacherBackend``, ``CalibrationMode`` and ``Strategy``
(docs/extending.md).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "annotate": "distillery.annotate.run",
    "AnnotateConfig": "distillery.annotate.config",
    "distill": "distillery.distill.train",
    "DistillConfig": "distillery.distill.config",
    "evaluate": "distillery.evaluation.evaluate",
    "EvaluateConfig": "distillery.evaluation.config",
    "run": "distillery.pipeline",
    "predict": "distillery.serve.predict",
    "PredictConfig": "distillery.serve.config",
    "export": "distillery.serve.export",
    "ExportConfig": "distillery.serve.config",
    "load_student": "distillery.student.runtime",
    "Student": "distillery.student.runtime",
    "active": "distillery.active.loop",
    "ActiveConfig": "distillery.active.config",
    "review": "distillery.review",
    "ReviewConfig": "distillery.review.config",
    "student_kinds": "distillery.core.registry",
    "teacher_backends": "distillery.core.registry",
    "calibration_modes": "distillery.core.registry",
    "active_strategies": "distillery.core.registry",
    "StudentKind": "distillery.student.kinds",
    "TeacherBackend": "distillery.annotate.teacher",
    "Annotation": "distillery.annotate.teacher",
    "Teacher": "distillery.annotate.teacher",
    "TeacherRuntime": "distillery.annotate.teacher",
    "TeacherSpec": "distillery.core.annotations",
    "CalibrationMode": "distillery.annotate.calibration",
    "Calibration": "distillery.annotate.calibration",
    "Strategy": "distillery.active.strategies",
    "TaskSpec": "distillery.core.tasks",
    "UserError": "distillery.core.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'distillery' has no attribute '{name}'")
    from distillery.core.models import quiet_third_party

    quiet_third_party()
    if name in (
        "annotate",
        "distill",
        "active",
        "review",
    ):  # the stage's package, callable as its function (core/lazy.py)
        return importlib.import_module(f"distillery.{name}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
