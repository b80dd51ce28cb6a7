"""Teacher-grade labels at the student's cost: annotate only the rows the student deferred.

distillery predict  --student RUN/student --data new.csv --out preds.csv --defer
distillery annotate --data preds.csv --only-deferred --out RUN-deferred     # -> RUN-deferred/merged.csv
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from distillery.core.annotations import read_annotations
from distillery.core.inputs import deferred_flags
from distillery.core.rundir import append_csv, replacing

__all__ = ["merge_answers"]


def merge_answers(predictions: str | Path, annotations: Path, out: Path, chunk_rows: int = 10_000) -> dict:
    """Write ``out``: every prediction row, with the teacher's label where the student deferred.

    Columns ``id, text, label, source`` (``student`` or ``teacher``; ``student`` too for a deferred
    row the teacher failed on, with ``teacher_error`` set, or did not see, e.g. under --limit).
    Streams the predictions; returns counts.
    """
    frame, _ = read_annotations(annotations)
    teacher = dict(zip(frame["id"].astype(str), frame["teacher_label"]))
    errors = dict(zip(frame["id"].astype(str), frame["error_type"]))
    counts = {"rows": 0, "teacher": 0, "failed": 0, "not_annotated": 0}
    with replacing(out) as fh:
        for i, chunk in enumerate(pd.read_csv(predictions, keep_default_na=False, chunksize=chunk_rows, dtype=str)):
            _merge_chunk(chunk, teacher, errors, counts, fh, header=i == 0)
    return counts


def _merge_chunk(chunk: pd.DataFrame, teacher: dict, errors: dict, counts: dict, fh, header: bool) -> None:
    """Merge one chunk of predictions with the teacher's answers, append it to ``fh`` and count."""
    deferred = deferred_flags(chunk["deferred"])
    answered = chunk["id"].map(teacher).fillna("")
    failed = chunk["id"].map(errors).fillna("")
    use_teacher = deferred & (answered != "") & (failed == "")
    merged = pd.DataFrame(
        {
            "id": chunk["id"],
            "text": chunk["text"],
            "label": chunk["label"].where(~use_teacher, answered),
            "source": use_teacher.map({True: "teacher", False: "student"}),
            "teacher_error": failed.where(deferred, ""),
        }
    )
    append_csv(fh, merged, header=header)
    counts["rows"] += len(chunk)
    counts["teacher"] += int(use_teacher.sum())
    counts["failed"] += int((deferred & (failed != "")).sum())
    counts["not_annotated"] += int((deferred & (answered == "") & (failed == "")).sum())
