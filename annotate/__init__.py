"""annotate: ask a teacher LLM for labels and the log-probabilities of every label."""

from annotate.chunks import ManifestError, read_annotations
from annotate.config import AnnotateConfig
from annotate.inputs import InputError, load_rows
from annotate.run import annotate
from annotate.tasks import TaskSpec, load_task

__all__ = ["AnnotateConfig", "InputError", "ManifestError", "TaskSpec", "annotate", "load_rows", "load_task", "read_annotations"]
