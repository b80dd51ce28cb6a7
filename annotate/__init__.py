"""annotate: ask a teacher LLM for labels and the log-probabilities of every label."""

from distillery.annotate.chunks import ManifestError, read_annotations
from distillery.annotate.config import AnnotateConfig
from distillery.annotate.run import annotate
from distillery.core.inputs import InputError, load_rows
from distillery.core.tasks import TaskSpec, load_task

__all__ = [
    "AnnotateConfig",
    "InputError",
    "ManifestError",
    "TaskSpec",
    "annotate",
    "load_rows",
    "load_task",
    "read_annotations",
]

from distillery.core.callable_module import callable_module  # noqa: E402

callable_module(__name__, annotate)  # distillery.annotate(cfg) runs the stage
