"""review: a queue of the run's rows for a person to label (Label Studio, Argilla, a spreadsheet),
and the import of their answers as the run's gold labels (``OUT/review/gold.csv``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from distillery.core.lazy import lazy_package

if TYPE_CHECKING:
    from distillery.review.config import ReviewConfig


def review(cfg: ReviewConfig):
    """Build the next review queue, or with ``cfg.import_file`` import the answers; returns the folder
    or file written."""
    from distillery.core.errors import UserError
    from distillery.core.lock import locked
    from distillery.core.run import Run
    from distillery.review.importer import import_labels
    from distillery.review.queue import build_queue

    run = Run.of(cfg)
    annotations = run.annotations
    if not run.manifest.is_file():  # before the lock, which would create the folder
        raise UserError(
            f"review: expected a run folder with annotations (--out RUN, RUN/annotations/manifest.json); found none in "
            f"'{annotations}'; run 'distillery annotate' (or run) first, or pass the right --out"
        )
    with locked(run.out, "review"):
        return import_labels(cfg) if cfg.import_file else build_queue(cfg)


lazy_package(
    __name__,
    {
        "review": __name__,
        "ReviewConfig": "distillery.review.config",
        "import_labels": "distillery.review.importer",
        "read_answers": "distillery.review.importer",
        "build_queue": "distillery.review.queue",
        "label_config": "distillery.review.queue",
    },
    call="review",
)
