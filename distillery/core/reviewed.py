"""The human labels of a run: ``OUT/review/`` (written by ``distillery review``, read by every stage).

- ``queue.csv``: every row ever put in a review queue, one line each: its id, the round, the part
  (``random``: a stratified sample of the evaluation rows, for unbiased estimates; ``doubtful``:
  training rows picked to find the teacher's errors), the teacher's label and score when it was
  picked, and why it was picked.
- ``gold.csv``: the overlay of human labels, one line per reviewed row: ``id, label, annotator,
  labelled_at, source, imported_at``. The annotation chunks are never rewritten; annotate
  (``--calibrate auto``/``reviewed``), distill (``--hard-labels auto``) and evaluate read this file.

The file formats are in docs/file-formats.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from distillery.core.run import Run

__all__ = [
    "GOLD_COLUMNS",
    "QUEUE_COLUMNS",
    "review_dir",
    "read_reviewed",
    "read_queue",
    "reviewed_labels",
    "reviewed_fingerprint",
]

GOLD_COLUMNS = ["id", "label", "annotator", "labelled_at", "source", "imported_at"]
QUEUE_COLUMNS = ["id", "round", "part", "split", "teacher_label", "teacher_score", "margin", "reasons"]


def review_dir(out: str | Path) -> Path:
    return Run(Path(out)).review


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=columns, dtype=str)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def read_reviewed(out: str | Path) -> pd.DataFrame:
    """The overlay of human labels (``GOLD_COLUMNS``); empty when the run has none."""
    return _read(review_dir(out) / "gold.csv", GOLD_COLUMNS)


def read_queue(out: str | Path) -> pd.DataFrame:
    """Every row put in a review queue so far (``QUEUE_COLUMNS``); empty before the first ``review``."""
    queue = _read(review_dir(out) / "queue.csv", QUEUE_COLUMNS)
    for col in ("teacher_score", "margin"):
        queue[col] = pd.to_numeric(queue[col])
    queue["round"] = pd.to_numeric(queue["round"]).astype(int)
    return queue


def reviewed_labels(out: str | Path, ids=None) -> dict[str, str]:
    """``{row id: human label}``, restricted to ``ids`` when given."""
    frame = read_reviewed(out)
    labels = dict(zip(frame["id"], frame["label"]))
    return labels if ids is None else {i: labels[i] for i in map(str, ids) if i in labels}


def reviewed_fingerprint(labels: dict[str, str]) -> str:
    """A short hash of the human labels (which rows, which labels): a calibration fitted on them is
    fitted again when they change."""
    text = "\n".join(f"{i}\x1f{lab}" for i, lab in sorted(labels.items()))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
