"""Read a labelled review queue back: a Label Studio export, Argilla records or the queue CSV.

Every answer is checked against the task's labels and the run's rows before anything is written
(one line names the first row that fails); the answers then go into the overlay
``OUT/review/gold.csv`` (a newer answer for a row replaces an older one). The annotation chunks
are never rewritten.

Formats read (docs/file-formats.md):

- Label Studio's JSON export (a list of tasks with ``annotations``; cancelled ones are skipped,
  the latest answer of a task wins) and its JSON-MIN export (flat ``distillery_id``, ``label``);
- Argilla records as ``dataset.records.to_json`` (or ``Dataset.to_disk``'s ``records.json``)
  writes them (``responses: {"label": [{"value", "user_id", "status"}]}``) or flattened
  (``label.responses``, ``label.responses.users``, ``label.responses.status``); only submitted
  responses count;
- the queue CSV (``id`` and ``label`` columns; ``annotator``, ``labelled_at`` if present); rows
  with an empty label are not reviewed yet.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from distillery.annotate.chunks import read_annotations
from distillery.core.errors import UserError
from distillery.core.reviewed import GOLD_COLUMNS, read_queue, read_reviewed, review_dir
from distillery.core.rundir import claim_folder, write_csv
from distillery.review.config import ReviewConfig

__all__ = ["import_labels", "read_answers"]


def _latest(items: list[dict]) -> dict | None:
    """The most recent of a task's answers (by ``updated_at`` or ``created_at``; ISO strings sort in time)."""
    items = [a for a in items if not a.get("was_cancelled")]
    return max(items, key=lambda a: str(a.get("updated_at") or a.get("created_at") or "")) if items else None


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
            raise UserError(f"{source}: task {task.get('id', n)} has no data.distillery_id; expected the tasks 'distillery review' wrote "
                            "(import its labelstudio.json into the project, not the texts alone)")
        answer = _latest(task.get("annotations") or [])
        if answer is None:
            continue
        choices = [c for r in answer.get("result", []) if r.get("type") == "choices" for c in r.get("value", {}).get("choices", [])]
        if not choices:
            continue  # answered without a choice (skipped in the tool): not reviewed
        answers.append({"id": str(row_id), "label": choices[0], "annotator": _who(answer.get("completed_by")),
                        "labelled_at": str(answer.get("updated_at") or answer.get("created_at") or "")})
    return answers


def _label_studio_min(items: list[dict]) -> list[dict]:
    """Label Studio's JSON-MIN export: one flat object per task, the choice under the control's name."""
    return [{"id": str(item["distillery_id"]), "label": item["label"], "annotator": _who(item.get("annotator")),
             "labelled_at": str(item.get("updated_at") or item.get("created_at") or "")}
            for item in items if isinstance(item.get("label"), str) and item.get("label") != ""]


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
            answers.append({"id": str(record["id"]), "label": value, "annotator": "" if user is None else str(user), "labelled_at": ""})
    return answers


def _csv(path: Path) -> list[dict]:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("id", "label") if c not in frame.columns]
    if missing:
        raise UserError(f"{path.name}: expected the columns id and label (the queue.csv 'distillery review' wrote, its label column "
                        f"filled); found {', '.join(frame.columns[:8])}")
    frame = frame[frame["label"].str.strip() != ""]
    return [{"id": r["id"], "label": r["label"].strip(), "annotator": r.get("annotator", ""), "labelled_at": r.get("labelled_at", "")}
            for r in frame.to_dict("records")]


def read_answers(path: str | Path) -> tuple[list[dict], str]:
    """``(answers [{id, label, annotator, labelled_at}], format name)`` of an export file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file to import: '{path}'")
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv(path), "CSV"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path.name}: expected a JSON export (Label Studio or Argilla) or a .csv; could not read it as JSON ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    if not isinstance(data, list) or (data and not isinstance(data[0], dict)):
        raise UserError(f"{path.name}: expected a list of tasks (Label Studio) or records (Argilla); found {type(data).__name__}")
    first = data[0] if data else {}
    if "data" in first or "annotations" in first:
        return _label_studio(data, path.name), "Label Studio"
    if "distillery_id" in first:
        return _label_studio_min(data), "Label Studio (JSON-MIN)"
    if "fields" in first or "responses" in first or "label.responses" in first:
        return _argilla(data), "Argilla"
    if not data:
        return [], "empty"
    raise UserError(f"{path.name}: expected a Label Studio export (tasks with data and annotations) or Argilla records (fields and "
                    f"responses); found objects with keys {', '.join(list(first)[:8])}")


def import_labels(cfg: ReviewConfig) -> Path:
    """Check an export's answers and merge them into ``OUT/review/gold.csv``; returns that file."""
    source = Path(cfg.import_file)
    answers, kind = read_answers(source)
    frame, manifest = read_annotations(cfg.annotations or Path(cfg.out) / "annotations")
    labels, known = manifest["labels"], set(frame["id"])
    for a in answers:  # every answer checked before anything is written
        if a["id"] not in known:
            raise UserError(f"{source.name}: row '{a['id']}' is not a row of {cfg.out}; expected the queue of this run "
                            f"(another run's export?); nothing was imported")
        if a["label"] not in labels:
            raise UserError(f"{source.name}: row '{a['id']}' has the label '{a['label']}'; expected one of {', '.join(labels)}; "
                            "fix it in the tool (or the file) and import again; nothing was imported")
    folder = claim_folder(review_dir(cfg.out), False)
    old = read_reviewed(cfg.out)
    new = pd.DataFrame(answers, columns=GOLD_COLUMNS[:4]).drop_duplicates("id", keep="last").assign(
        source=source.name, imported_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    before = dict(zip(old["id"], old["label"]))
    changed = sum(1 for i, lab in zip(new["id"], new["label"]) if i in before and before[i] != lab)
    added = sum(1 for i in new["id"] if i not in before)
    merged = pd.concat([old[~old["id"].isin(set(new["id"]))], new], ignore_index=True)[GOLD_COLUMNS]
    write_csv(folder / "gold.csv", merged)
    queued = set(read_queue(cfg.out)["id"])
    outside = sum(1 for i in new["id"] if i not in queued)
    teacher = dict(zip(frame["id"], frame["teacher_label"]))
    disagree = sum(1 for i, lab in zip(new["id"], new["label"]) if teacher.get(i) != lab)
    print(f"review: {source.name} ({kind}): {len(new)} answers, {added} new, {changed} changed, {len(new) - added - changed} as before"
          + (f", {outside} for rows outside the queue" if outside else "") + f"; the person and the teacher differ on {disagree}")
    print(f"review: {len(merged)} reviewed rows in {folder / 'gold.csv'}; rerun 'distillery run' (or annotate, distill and evaluate) "
          "to recalibrate the teacher on them, retrain and evaluate against them")
    return folder / "gold.csv"
