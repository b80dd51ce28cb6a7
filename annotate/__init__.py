"""annotate: ask a teacher LLM for labels and the log-probabilities of every label.

``distillery.annotate(cfg)`` runs the stage; the names below are imported on first use."""

from distillery.core.lazy import lazy_package

lazy_package(
    __name__,
    {
        "AnnotateConfig": "distillery.annotate.config",
        "ManifestError": "distillery.core.annotations",
        "read_annotations": "distillery.core.annotations",
        "annotate": "distillery.annotate.run",
        "InputError": "distillery.core.inputs",
        "load_rows": "distillery.core.inputs",
        "TaskSpec": "distillery.core.tasks",
        "load_task": "distillery.core.tasks",
    },
    call="annotate",
)
