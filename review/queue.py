"""Build a review queue: which rows a person should label, written in the formats people import.

Two parts (``--random-share`` splits ``--review-rows``):

- **random**: evaluation (test) rows drawn at random, stratified by the teacher's label with
  proportional allocation, so the part is a self-weighting sample: evaluate estimates teacher and
  student accuracy from it, with intervals (:func:`distillery.evaluation.metrics.stratified_accuracy`).
- **doubtful**: training rows most likely to be the teacher's errors. Each row's doubt is
  ``1 - margin`` (the gap between the teacher's top two calibrated probabilities) plus 1 when
  cleanlab's ``find_label_issues`` flags the teacher's label on out-of-fold probabilities (a
  logistic regression on the student's embeddings, 5-fold). These rows find errors; they also
  become the student's hard labels. Where the student disagrees with the teacher the reasons say
  so, but it does not add to the doubt: measured on 9 user-like runs (benchmarks/review.py), it
  raised the errors found per row on one and, on another, where the student itself had drifted
  (it disagreed on 32% of its own training rows), brought them down to the random rows' rate;
  margin and cleanlab found at least twice the random rate's errors wherever that was possible.

Picking rows by the teacher's and student's own outputs, never by the answer, leaves a
calibration fitted on them consistent (``--calibrate reviewed``). Every row picked is recorded
in ``OUT/review/queue.csv``: a second call draws new rows only.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from distillery.core.annotations import read_annotations, teacher_probabilities
from distillery.core.errors import UserError
from distillery.core.reviewed import QUEUE_COLUMNS, read_queue, read_reviewed, review_dir
from distillery.core.run import Run
from distillery.core.rundir import ForeignFiles, guard_files, write_csv, write_json, write_text
from distillery.review.config import ReviewConfig

__all__ = ["build_queue", "doubt_scores", "label_config", "owned", "pick_doubtful", "stratified_sample", "write_round"]

CV_FOLDS = 5


def stratified_sample(strata: pd.Series, n: int, rng: np.random.Generator) -> list:
    """``n`` index values of ``strata`` drawn at random, each stratum in proportion to its size
    (largest remainders); returns them in draw order."""
    sizes = strata.value_counts()
    n = min(n, len(strata))
    quota = sizes / sizes.sum() * n
    take = np.floor(quota).astype(int)
    for name in (quota - take).sort_values(ascending=False).index[: n - take.sum()]:
        take[name] += 1
    picked = []
    for name, k in take.items():
        members = strata.index[strata == name].to_numpy()
        picked += list(rng.choice(members, size=int(k), replace=False))
    return picked


def doubt_scores(probs: np.ndarray, issues: np.ndarray | None) -> np.ndarray:
    """How likely each row's teacher label is wrong, for ranking: ``1 - margin`` + cleanlab's label issue."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    score = 1.0 - (top2[:, 1] - top2[:, 0])
    if issues is not None:
        score += issues
    return score


def label_issues(embeddings: np.ndarray, teacher_ids: np.ndarray, seed: int) -> np.ndarray | None:
    """cleanlab's label issues of the teacher's labels, from out-of-fold probabilities of a logistic
    regression on the student's embeddings; None when a label has too few rows for the folds."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    counts = np.bincount(teacher_ids)
    folds = min(CV_FOLDS, counts[counts > 0].min())
    if folds < 2 or (counts > 0).sum() < 2:
        return None
    model = LogisticRegression(max_iter=1000)
    oof = cross_val_predict(
        model,
        embeddings,
        teacher_ids,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        method="predict_proba",
    )
    present = np.flatnonzero(counts > 0)
    full = np.zeros((len(teacher_ids), len(counts)))
    full[:, present] = oof
    remap = {old: new for new, old in enumerate(present)}  # cleanlab wants labels 0..K-1 that all occur
    # n_jobs=1: cleanlab's default forks a process pool, and a fork of a process that runs torch's threads
    # can deadlock on a lock a thread held (seen under pytest: the queue never returned); a few hundred rows
    # need no pool
    return find_label_issues(np.array([remap[t] for t in teacher_ids]), full[:, present], n_jobs=1)


def student_signals(cfg: ReviewConfig, rows: pd.DataFrame, labels: list[str], probs: np.ndarray) -> tuple:
    """``(student's predictions, cleanlab label issues, what was used)`` on ``rows``; Nones without a student."""
    from distillery.core.models import pick_device
    from distillery.student import load_student

    path = Run.of(cfg).student
    if cfg.student and not (path / "distillery_student.json").is_file():
        raise UserError(
            "--student: expected a student folder distill wrote (with distillery_student.json); found none "
            f"in '{path}'; "
            "pass the right folder, or leave --student out (OUT/student, or the teacher's margin alone without one)"
        )
    if not (path / "distillery_student.json").is_file():
        return (
            None,
            None,
            "the teacher's margin (no student yet: distill first to add cleanlab's label issues on its embeddings)",
        )
    student = load_student(path, pick_device(cfg.device))
    if student.labels != labels:
        return None, None, f"the teacher's margin ({path} is a student for other labels)"
    print(f"review: reading {len(rows)} training rows with the student ({path.name})")
    if student.session is not None:  # ONNX: predictions only
        return (
            student.probabilities(rows["text"].tolist()).argmax(1),
            None,
            "the teacher's margin (an ONNX student gives no embeddings for cleanlab)",
        )
    student_probs, embeddings = student.embeddings(rows["text"].tolist())
    issues = label_issues(embeddings, probs.argmax(1), cfg.seed)
    used = "the teacher's margin" + (" and cleanlab's label issues" if issues is not None else "")
    return student_probs.argmax(1), issues, used


def label_config(labels: list[str]) -> str:
    """The Label Studio labeling interface for the queue: the text and one choice per label."""
    choices = "\n".join(f"    <Choice value={quoteattr(lab)}/>" for lab in labels)
    return (
        '<View>\n  <Text name="text" value="$text"/>\n  <Choices name="label" toName="text" choice="single" '
        'showInline="true">\n'
        f"{choices}\n  </Choices>\n</View>\n"
    )


def _label_studio(picked: pd.DataFrame) -> list[dict]:
    """Label Studio tasks, the teacher's label as a prediction with its probability as the score."""
    return [
        {
            "data": {"text": r.text, "distillery_id": r.id, "part": r.part, "reasons": r.reasons},
            "predictions": [
                {
                    "model_version": "distillery-teacher",
                    "score": float(r.teacher_score),
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "text",
                            "type": "choices",
                            "value": {"choices": [r.teacher_label]},
                        }
                    ],
                }
            ],
        }
        for r in picked.itertuples()
    ]


def _argilla(picked: pd.DataFrame, round_no: int) -> list[dict]:
    """Argilla records (as ``dataset.records.to_json`` writes them): the teacher's label as a suggestion with its
    score."""
    return [
        {
            "id": r.id,
            "fields": {"text": r.text},
            "metadata": {"part": r.part, "round": round_no, "reasons": r.reasons},
            "suggestions": {
                "label": {"value": r.teacher_label, "score": float(r.teacher_score), "agent": "distillery-teacher"}
            },
            "responses": {},
            "vectors": {},
            "status": "pending",
        }
        for r in picked.itertuples()
    ]


def owned(folder: Path, names: list[str]) -> None:
    """Stop before writing over a file of the user's in OUT/review (an export saved there is fine). Nothing
    is claimed here: each file is recorded as Distillery's when it is written whole."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        guard_files(folder, names)
    except ForeignFiles:
        foreign = ", ".join(n for n in names if (folder / n).exists())
        raise UserError(
            f"{folder} holds {foreign}, which distillery did not write; move it elsewhere and run "
            "'distillery review' again"
        ) from None


def pick_doubtful(
    cfg: ReviewConfig, pool: pd.DataFrame, probs: np.ndarray, labels: list[str], k: int
) -> tuple[pd.DataFrame, str]:
    """The ``k`` rows of ``pool`` most in doubt (``probs``: the teacher's, row for row), with their
    reasons; and what the doubt was measured by."""
    if k == 0:
        return pool.iloc[:0].assign(part="doubtful", reasons=""), ""
    student_pred, issues, used = student_signals(cfg, pool, labels, probs)
    order = np.argsort(-doubt_scores(probs, issues), kind="stable")[:k]

    def reasons(i: int) -> str:
        out = [f"margin {pool['margin'].iloc[i]:.3f}"]
        if student_pred is not None and student_pred[i] != probs[i].argmax():
            out.append(f"student says {labels[student_pred[i]]}")
        if issues is not None and issues[i]:
            out.append("cleanlab: likely label issue")
        return "; ".join(out)

    return pool.iloc[order].assign(part="doubtful", reasons=[reasons(i) for i in order]), used


def write_round(cfg: ReviewConfig, picked: pd.DataFrame, queue: pd.DataFrame, labels: list[str], round_no: int) -> Path:
    """The round's files (Label Studio, Argilla, CSV), then the record of what was picked."""
    folder = review_dir(cfg.out)
    here = folder / f"round-{round_no:02d}"
    sheet = picked[["id", "text", "part", "teacher_label", "teacher_score", "reasons"]].assign(label="", annotator="")
    write_csv(here / "queue.csv", sheet)
    write_json(here / "labelstudio.json", _label_studio(picked))
    write_json(here / "argilla.json", _argilla(picked, round_no))
    write_text(folder / "label_config.xml", label_config(labels))
    # Last: a kill before it leaves a round that the next call draws again the same way.
    write_csv(folder / "queue.csv", pd.concat([queue, picked[QUEUE_COLUMNS]], ignore_index=True)[QUEUE_COLUMNS])
    return here


def build_queue(cfg: ReviewConfig) -> Path:
    """Pick the next ``review_rows`` rows and write them to ``OUT/review/round-NN/``; returns that folder."""
    frame, manifest = read_annotations(Run.of(cfg).annotations)
    labels = manifest["labels"]
    folder = review_dir(cfg.out)
    queue = read_queue(cfg.out)
    round_no = int(queue["round"].max()) + 1 if len(queue) else 1
    owned(folder, ["queue.csv", "label_config.xml", f"round-{round_no:02d}"])
    seen = set(queue["id"]) | set(
        read_reviewed(cfg.out)["id"]
    )  # never the same row twice, nor one a person already labelled
    rows = frame[(frame["error_type"] == "") & ~frame["id"].isin(seen)].reset_index(drop=True)
    probs = teacher_probabilities(rows, labels)
    rows = rows.assign(
        teacher_label=[labels[i] for i in probs.argmax(1)],  # the stratum of the random part
        teacher_score=probs.max(1),
        margin=np.diff(np.sort(probs, axis=1)[:, -2:], axis=1)[:, 0],
        round=round_no,
    )
    has_test = (frame["split"] == "test").any()
    n_random = int(round(cfg.review_rows * cfg.random_share))
    pool = rows[rows["split"] == "test"] if has_test else rows
    random_ids = stratified_sample(pool["teacher_label"], n_random, np.random.default_rng([cfg.seed, round_no]))
    picked_random = rows.loc[random_ids].assign(part="random", reasons="random (stratified by the teacher's label)")
    others = rows[(rows["split"] != "test") if has_test else ~rows.index.isin(random_ids)]
    picked_doubt, used = pick_doubtful(
        cfg, others, probs[others.index], labels, min(cfg.review_rows - len(picked_random), len(others))
    )
    picked = pd.concat([picked_random, picked_doubt], ignore_index=True)
    if picked.empty:
        print(f"review: every annotated row of {cfg.out} is already in a review queue or reviewed; nothing to add")
        return folder
    here = write_round(cfg, picked, queue, labels, round_no)
    test = "test " if has_test else ""
    if len(picked) < cfg.review_rows or len(picked_random) != n_random:
        print(
            f"review: note: {cfg.review_rows} rows asked for ({n_random} random), {len(picked)} picked "
            f"({len(picked_random)} random): "
            f"{len(pool)} unreviewed {test}rows and {len(others)} others were left"
        )
    print(
        f"review: round {round_no}: {len(picked)} rows ({len(picked_random)} random {test}rows, stratified "
        "by the teacher's label; "
        f"{len(picked_doubt)} doubtful {'training ' if has_test else ''}rows, by {used or 'no signal'}) -> {here}"
    )
    print(
        f"review: Label Studio: new project, labeling interface = {folder / 'label_config.xml'}, import "
        f"{here / 'labelstudio.json'}; "
        f"Argilla: records in {here / 'argilla.json'} (docs/usage.md, 'Get gold labels'); a spreadsheet: "
        "fill the label column of "
        f"{here / 'queue.csv'}"
    )
    print(
        f"review: then 'distillery review --import EXPORT --out {cfg.out}', and rerun to recalibrate, "
        "retrain and evaluate"
    )
    return here
