"""What a review's human labels say about teacher and student (``OUT/review/``, written by ``distillery review``).

- the **random part** (evaluation rows drawn at random, stratified by the teacher's label):
  accuracy of the teacher and of each student, post-stratified over the evaluation rows, with
  95% intervals (:func:`~distillery.evaluation.metrics.stratified_accuracy`);
- the **doubtful part** (training rows picked as likely teacher errors): how many were errors,
  and how often teacher and student now agree with the person there (a student distilled after
  the import trained on these rows with the person's labels: in-sample);
- the teacher errors the review found: reviewed rows whose label differs from the teacher's
  label when the row was picked (its current label for rows labelled outside a queue).
"""

from __future__ import annotations

import numpy as np

from distillery.core.reviewed import read_queue, reviewed_labels
from distillery.evaluation.metrics import stratified_accuracy
from distillery.student import load_student

__all__ = ["review_metrics"]


def review_metrics(out, data, students: dict, device, batch_size: int) -> dict | None:
    """The review section of metrics.json; None when the run has no imported human labels.

    ``data``: evaluate's :class:`EvalRows`; ``students``: ``{name: student folder}`` (loaded
    only when there are human labels, to predict the reviewed rows).
    """
    human = reviewed_labels(out)
    if not human:
        return None
    students = {name: load_student(path, device) for name, path in students.items()}
    labels = data.labels
    queue = read_queue(out)
    other = sorted(
        set(human) - set(queue["id"]) & set(data.frame["id"])
    )  # labelled without being queued: no part of an estimate
    queue = queue[queue["id"].isin(human.keys())]
    frame = data.frame.set_index("id")
    current = dict(zip(data.frame["id"], data.frame["teacher_label"]))
    eval_ids = set(data.rows["id"])
    random = queue[(queue["part"] == "random") & queue["id"].isin(eval_ids)]
    doubtful = queue[queue["part"] == "doubtful"]
    strata = np.array([labels[i] for i in data.teacher_probs.argmax(1)])
    result = {
        "reviewed_rows": len(queue) + len(other),
        "random_rows": len(random),
        "doubtful_rows": len(doubtful),
        "other_rows": len(other),
        "random": {},
        "doubtful": {},
    }
    for part, rows in (("random", random), ("doubtful", doubtful)):
        if rows.empty:
            continue
        gold = np.array([human[i] for i in rows["id"]])
        found = int((rows["teacher_label"].to_numpy() != gold).sum())  # the teacher's label when the row was picked
        result[part]["teacher_errors_found"] = found
        result[part]["errors_per_row"] = found / len(rows)
        teacher_now = np.array([current[i] for i in rows["id"]])
        predictions = {"teacher": teacher_now}
        texts = frame.loc[rows["id"], "text"].tolist()
        for name, student in students.items():
            predictions[name] = np.array(student.labels)[student.probabilities(texts, batch_size).argmax(1)]
        for name, pred in predictions.items():
            if part == "random":
                result[part][name] = stratified_accuracy(
                    pred == gold, np.array([current[i] for i in rows["id"]]), strata
                )
            else:
                result[part][name] = {"accuracy": float((pred == gold).mean()), "rows": len(rows)}
    result["teacher_errors_found"] = sum(
        result[p].get("teacher_errors_found", 0) for p in ("random", "doubtful")
    ) + sum(1 for i in other if current[i] != human[i])
    return result
