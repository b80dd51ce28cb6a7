"""Read a labelled review queue back: a Label Studio export, Argilla records or the queue CSV.

Every answer is checked against the task's labels and the run's rows before anything is written
(one line names the first row that fails); the answers then go into the overlay
``OUT/review/gold.csv``: a different answer for a row replaces the one there unless both are
dated and the one there is newer; the same answer keeps the line (and its annotator) as it was. The annotation chunks
are never rewritten.

Formats read (docs/file-formats.md):

- Label Studio's JSON export (a list of tasks with ``annotations``; cancelled ones are skipped,
  the latest answer of a task wins, annotators who disagree are counted) and its JSON-MIN export (flat
  ``distillery_id``, ``label``);
- Argilla records as ``dataset.records.to_json`` (or ``Dataset.to_disk``'s ``records.json``)
  writes them (``responses: {"label": [{"value", "user_id", "status"}]}``) or flattened
  (``label.responses``, ``label.responses.users``, ``label.responses.status``); only submitted
  responses count;
- the queue CSV (``id`` and ``label`` columns; ``annotator``, ``labelled_at`` if present); rows
  with an empty label are not reviewed yet.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pandas as pd

from distillery.core.annotations import read_annotations
from distillery.core.errors import UserError
from distillery.core.reviewed import GOLD_COLUMNS, read_queue, read_reviewed, review_dir
from distillery.core.run import Run
from distillery.core.rundir import write_csv
from distillery.review.config import ReviewConfig
from distillery.review.queue import owned

__all__ = ["import_labels", "read_answers"]


def _choice(annotation: dict) -> str | None:
    """The label an annotation chose (its first ``choices`` result), or None (skipped without a choice)."""
    return next(
        (
            c
            for r in annotation.get("result") or []
            if r.get("type") == "choices"
            for c in r.get("value", {}).get("choices", [])
        ),
        None,
    )


def _when(annotation: dict) -> str:
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


def _who(value) -> str:
    """An annotator as the export names them: an email, a name or an id."""
    if isinstance(value, dict):
        return str(value.get("email") or value.get("username") or value.get("id") or "")
    return "" if value is None else str(value)


def _label_studio(tasks: list[dict], source: str) -> list[dict]:
    answers = []
    for n, task in enumerate(tasks):
        data = task.get("data", {})
        row_id = data.get("distillery_id")
        if row_id is None:
            raise UserError(
                f"{source}: task {task.get('id', n)} has no data.distillery_id; expected the tasks "
                "'distillery review' wrote "
                "(import its labelstudio.json into the project, not the texts alone)"
            )
        given = sorted(
            (a for a in task.get("annotations") or [] if not a.get("was_cancelled") and _choice(a)), key=_when
        )
        for answer in given:  # every annotator's answer, oldest first: the latest is taken, a disagreement counted
            answers.append(
                {
                    "id": str(row_id),
                    "label": _choice(answer),
                    "annotator": _who(answer.get("completed_by")),
                    "labelled_at": _when(answer),
                }
            )
    return answers


def _label_studio_min(items: list[dict]) -> list[dict]:
    """Label Studio's JSON-MIN export: one flat object per task, the choice under the control's name."""
    return [
        {
            "id": str(item["distillery_id"]),
            "label": item["label"],
            "annotator": _who(item.get("annotator")),
            "labelled_at": _when(item),
        }
        for item in items
        if isinstance(item.get("label"), str) and item.get("label") != ""
    ]


def _argilla(records: list[dict]) -> list[dict]:
    answers = []
    for record in records:
        if "responses" in record:  # nested, as records.to_json writes
            responses = (record.get("responses") or {}).get("label") or []
            values = [(r.get("value"), r.get("user_id"), r.get("status")) for r in responses]
        else:  # flattened, as records.to_list(flatten=True) and the Hugging Face export write
            users = record.get("label.responses.users") or []
            status = record.get("label.responses.status") or []
            values = list(zip(record.get("label.responses") or [], users + [None] * 99, status + [None] * 99))
        values = [v for v in values if v[0] not in (None, "") and v[2] in (None, "submitted")]
        if values:
            value, user, _ = values[-1]
            answers.append(
                {
                    "id": str(record["id"]),
                    "label": value,
                    "annotator": "" if user is None else str(user),
                    "labelled_at": "",
                }
            )
    return answers


def _csv(path: Path) -> list[dict]:
    try:  # the separator sniffed: a spreadsheet may save with ';' or tabs
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=None, engine="python", encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(
            f"{path.name}: expected a CSV with id and label columns (the queue.csv 'distillery review' wrote); "
            f"could not read it ({str(err).splitlines()[0]})"
        ) from None
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in ("id", "label") if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path.name}: expected the columns id and label (the queue.csv 'distillery review' wrote, its "
            "label column "
            f"filled); found {', '.join(frame.columns[:8])}"
        )
    frame = frame[frame["label"].str.strip() != ""]
    return [
        {
            "id": r["id"].strip(),
            "label": r["label"].strip(),
            "annotator": r.get("annotator", ""),
            "labelled_at": r.get("labelled_at", ""),
        }
        for r in frame.to_dict("records")
    ]


def read_answers(path: str | Path) -> tuple[list[dict], str]:
    """``(answers [{id, label, annotator, labelled_at}], format name)`` of an export file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--import: expected an export file; '{path}' is a folder; pass the file the tool exported")
    if not path.is_file():
        raise FileNotFoundError(f"no such file to import: '{path}'")
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv(path), "CSV"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(
            f"{path.name}: expected a JSON export (Label Studio or Argilla) or a .csv; could not read it as "
            f"JSON ({err})"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    if not isinstance(data, list):
        raise UserError(
            f"{path.name}: expected a list of tasks (Label Studio) or records (Argilla); found a JSON "
            f"{type(data).__name__}"
        )
    odd = next((i for i, item in enumerate(data) if not isinstance(item, dict)), None)
    if odd is not None:
        raise UserError(
            f"{path.name}: expected a list of tasks (Label Studio) or records (Argilla), each an object; "
            f"item {odd + 1} "
            f"is a {type(data[odd]).__name__}"
        )
    if not data:
        return [], "empty"
    first = data[0]
    readers = [
        ("Label Studio", lambda: _label_studio(data, path.name)) if "data" in first or "annotations" in first else None,
        ("Label Studio (JSON-MIN)", lambda: _label_studio_min(data)) if "distillery_id" in first else None,
        ("Argilla", lambda: _argilla(data))
        if "fields" in first
        or "responses" in first
        or "label.responses" in first
        or ("id" in first and "status" in first)
        else None,
    ]
    for kind, read in filter(None, readers):
        try:
            return read(), kind
        except (KeyError, AttributeError, TypeError) as err:
            raise UserError(
                f"{path.name}: a {kind} export, but an item lacks or garbles {err}; export the project again from the "
                "tool, unedited"
            ) from None
    raise UserError(
        f"{path.name}: expected a Label Studio export (tasks with data and annotations) or Argilla records (fields and "
        f"responses); found objects with keys {', '.join(list(first)[:8])}"
    )


def import_labels(cfg: ReviewConfig) -> Path:
    """Check an export's answers and merge them into ``OUT/review/gold.csv``; returns that file."""
    source = Path(cfg.import_file)
    answers, kind = read_answers(source)
    frame, manifest = read_annotations(Run.of(cfg).annotations)
    labels, known = manifest["labels"], set(frame["id"])
    for a in answers:  # every answer checked before anything is written
        if a["id"] not in known:
            raise UserError(
                f"{source.name}: row '{a['id']}' is not a row of {cfg.out}; expected the queue of this run "
                f"(another run's export?); nothing was imported"
            )
        if a["label"] not in labels:
            raise UserError(
                f"{source.name}: row '{a['id']}' has the label '{a['label']}'; expected one of {', '.join(labels)}; "
                "fix it in the tool (or the file) and import again; nothing was imported"
            )
    if not answers:
        print(
            f"review: {source.name} ({kind}) holds no answers (export it after labelling; a skipped or "
            "cancelled task is not an "
            "answer); nothing imported"
        )
        return review_dir(cfg.out) / "gold.csv"
    new = pd.DataFrame(answers, columns=GOLD_COLUMNS[:4])
    twice = new[new["id"].duplicated(keep=False)].groupby("id")["label"].nunique()
    new = new.drop_duplicates("id", keep="last").assign(
        source=source.name, imported_at=time.strftime("%Y-%m-%dT%H:%M:%S")
    )
    folder = review_dir(cfg.out)
    old = read_reviewed(cfg.out).set_index("id", drop=False)
    keep_old = [
        i
        for i, lab, at in zip(new["id"], new["label"], new["labelled_at"])
        if i in old.index
        and (old.at[i, "label"] == lab or (at and old.at[i, "labelled_at"] and old.at[i, "labelled_at"] > at))
    ]  # same answer, or a newer one kept
    changed = sum(1 for i in new["id"] if i in old.index and i not in keep_old)
    older = sum(1 for i, lab in zip(new["id"], new["label"]) if i in keep_old and old.at[i, "label"] != lab)
    added = sum(1 for i in new["id"] if i not in old.index)
    merged = pd.concat(
        [old[~old["id"].isin(set(new["id"]) - set(keep_old))], new[~new["id"].isin(keep_old)]], ignore_index=True
    )[GOLD_COLUMNS]
    owned(folder, ["gold.csv"])
    write_csv(folder / "gold.csv", merged)
    queued = set(read_queue(cfg.out)["id"])
    outside = sum(1 for i in new["id"] if i not in queued)
    teacher = dict(zip(frame["id"], frame["teacher_label"]))
    disagree = sum(1 for i, lab in zip(new["id"], new["label"]) if teacher.get(i) != lab)
    print(
        f"review: {source.name} ({kind}): {_n(len(new), 'answer')}: {added} new, {changed} changed, "
        f"{len(new) - added - changed} as before"
        + (f" ({older} older than the answer already imported: kept the newer one)" if older else "")
        + (
            f"; {_n(outside, 'row')} outside the review queue (used for calibration and training, not for "
            "the estimates)"
            if outside
            else ""
        )
        + f"; the person and the teacher differ on {disagree}"
    )
    if (twice > 1).any():
        print(
            f"review: warning: {_n(int((twice > 1).sum()), 'row')} got different labels within {source.name} "
            "(two annotators, or a row "
            "entered twice): the latest answer was taken"
        )
    print(
        f"review: {len(merged)} reviewed rows in {folder / 'gold.csv'}; rerun 'distillery run' (or annotate, "
        "distill and evaluate) "
        "to recalibrate the teacher on them, retrain and evaluate against them"
    )
    return folder / "gold.csv"


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
