"""Teacher-grade labels at the student's cost: annotate only the rows the student deferred.

    distillery predict  --student RUN/student --data new.csv --out preds.csv --defer
    distillery annotate --data preds.csv --only-deferred --out RUN-deferred     # -> RUN-deferred/merged.csv
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from annotate.chunks import read_annotations
from annotate.inputs import InputError
from annotate.rundir import append_csv, replacing

__all__ = ["keep_deferred", "merge_answers"]


def _deferred(column: pd.Series) -> pd.Series:
    """``predict --defer``'s column as booleans, however the file stored them (True, true, 1)."""
    return column.astype(str).str.lower().isin(("true", "1"))


def keep_deferred(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The rows of a ``predict --defer`` output whose ``deferred`` column is true."""
    if "deferred" not in frame.columns:
        raise InputError(f"{source}: expected a 'deferred' column (--only-deferred reads the output of 'distillery predict --defer'); "
                         f"found {', '.join(map(str, frame.columns[:10]))}")
    return frame[_deferred(frame["deferred"])]


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
    deferred = _deferred(chunk["deferred"])
    answered = chunk["id"].map(teacher).fillna("")
    failed = chunk["id"].map(errors).fillna("")
    use_teacher = deferred & (answered != "") & (failed == "")
    merged = pd.DataFrame({"id": chunk["id"], "text": chunk["text"], "label": chunk["label"].where(~use_teacher, answered),
                           "source": use_teacher.map({True: "teacher", False: "student"}), "teacher_error": failed.where(deferred, "")})
    append_csv(fh, merged, header=header)
    counts["rows"] += len(chunk)
    counts["teacher"] += int(use_teacher.sum())
    counts["failed"] += int((deferred & (failed != "")).sum())
    counts["not_annotated"] += int((deferred & (answered == "") & (failed == "")).sum())
