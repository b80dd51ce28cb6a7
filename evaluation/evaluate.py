"""The evaluate stage: student(s) vs teacher vs gold -> metrics.json, report.md, plots.

Run it with::

    distillery evaluate --out data/runs/demo     # OUT/annotations (test split) and OUT/student
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from distillery.core.annotations import TeacherSpec, read_annotations, teacher_probabilities
from distillery.core.errors import UserError
from distillery.core.lock import locked
from distillery.core.models import pick_device
from distillery.core.run import Run
from distillery.core.rundir import guard_files, write_json, write_text
from distillery.core.studentmeta import StudentMeta
from distillery.evaluation.config import EvaluateConfig
from distillery.evaluation.diagnosis import diagnose
from distillery.evaluation.metrics import (
    agreement_metrics,
    bootstrap_intervals,
    class_retention,
    classification_metrics,
)
from distillery.evaluation.report import ReportData, plot_confusion, plot_reliability, render_report
from distillery.evaluation.review import review_metrics
from distillery.student import (
    coverage_curve,
    load_student,
    pick_threshold,
    plot_coverage,
    push_to_hub,
    size_on_disk,
    write_card,
)
from distillery.student import predict_probabilities as predict_student

__all__ = ["evaluate", "predict_student", "size_on_disk", "student_names"]


def _time(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def student_names(paths: list[str]) -> dict[str, str]:
    """A unique display name per student directory: its folder name when that is unique
    (``student``), else as many trailing path parts as tell them apart (``a/student``,
    ``b/student``). Two spellings of one directory are one student. Returns ``{name: path}``
    in the given order."""
    unique: dict[Path, str] = {}
    for path in paths:
        unique.setdefault(Path(path).resolve(), path)
    parts = [
        p.relative_to(p.anchor).parts for p in unique
    ]  # never the machine's root: the names go into shared reports
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) and "teacher" not in names:  # "teacher" is the teacher's row
            break
    else:  # only a student at /teacher gets here
        names = [f"{n} (student)" if n == "teacher" else n for n in names]
    return dict(zip(names, unique.values()))


def _file_name(name: str) -> str:
    """A student's display name as part of a file name (``a/student`` -> ``a_student``)."""
    return re.sub(r"[^\w.-]+", "_", name)


def gold_ceiling(student: Path, data: EvalRows, scored: dict, device, batch_size: int) -> dict | None:
    """The same student trained on the gold labels (``distill --ceiling``, beside ``student``) against gold:
    what this student can learn from these rows. Adds to ``scored`` (the student's metrics) its macro-F1
    over the ceiling's. None without gold or without that student."""
    path = Run(student.parent, student_dir=str(student)).ceiling
    if data.gold is None or not (path / "train_summary.json").is_file():
        return None
    m = data.vs_gold(load_student(path, device).probabilities(data.rows["text"].tolist(), batch_size))
    scored["macro_f1_vs_ceiling"] = scored["macro_f1"] / m["macro_f1"] if m["macro_f1"] else None
    return {"student": path.name, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "per_class": m["per_class"]}


def learning_curve(student: Path, texts: list[str], gold, teacher_pred, batch_size: int, device) -> list[dict]:
    """Accuracy and agreement of the students ``distill --learning-curve`` trained on part of the
    rows (``learning_curve/student-*`` beside ``student``) and of ``student`` (all rows); empty without them."""
    parts = sorted(Run(student.parent, student_dir=str(student)).learning_curve.glob("student-*"))
    points = []
    for path in [*parts, student] if parts else []:
        pred = load_student(path, device).probabilities(texts, batch_size).argmax(1)
        summary = json.loads((path / "train_summary.json").read_text())
        points.append(
            {
                "train_rows": summary["train_rows"] + summary["val_rows"],
                "steps": summary["steps"],
                "accuracy": float((pred == gold).mean()) if gold is not None else None,
                "agreement": float((pred == teacher_pred).mean()),
            }
        )
    return sorted(points, key=lambda p: p["train_rows"])


REPORT_FILES = ["metrics.json", "evaluate_config.yaml", "report.md", "coverage.png", "reliability.png"]


def evaluate(cfg: EvaluateConfig) -> dict:
    """Compare students, teacher and gold on the evaluation rows; write the report. Returns metrics.

    One process at a time writes ``OUT``; a report file there that Distillery did not write is
    never replaced.
    """
    with locked(cfg.out, "evaluate"):
        return _evaluate(cfg)


def check_report_writable(cfg: EvaluateConfig) -> None:
    """Stop if OUT holds a report file Distillery did not write (``run`` and ``active`` check
    before their first teacher call, not after the training)."""
    out = Path(cfg.out)
    guard_files(out, [*REPORT_FILES, *(p.name for p in out.glob("confusion_*.png"))])


@dataclass
class EvalRows:
    """The rows evaluate scores: the annotations of one split, failed rows left out."""

    frame: pd.DataFrame  # every annotated row (the training rows' gold picks the majority label)
    rows: pd.DataFrame  # the evaluated ones
    labels: list[str]
    n_failed: int
    gold: np.ndarray | None  # gold label ids, None without gold
    teacher_probs: np.ndarray

    def vs_gold(self, probs: np.ndarray) -> dict:
        if self.gold is not None:
            return classification_metrics(probs, self.gold, self.labels)
        return {
            "accuracy": None,
            "macro_f1": None,
            "ece": None,
            "confusion": None,
            "per_class": {lab: {"f1": None} for lab in self.labels},
        }


def _evaluate(cfg: EvaluateConfig) -> dict:
    """The stage in its steps: read the rows, score the teacher and each student, plot, write the report."""
    run = Run.of(cfg)
    out = run.out
    check_report_writable(cfg)  # each report file is recorded as Distillery's when it is written whole, not before
    frame, manifest = read_annotations(run.annotations)
    data = eval_rows(cfg, frame, manifest)
    texts = data.rows["text"].tolist()
    device = pick_device(cfg.device)
    models = {"teacher": teacher_metrics(data, manifest)}
    named = student_names(cfg.students or [str(run.student)])  # a/student and b/student are two rows, not one
    for name, path in named.items():
        models[name] = student_metrics(cfg, data, path, device, models["teacher"])
    majority, majority_acc = majority_baseline(data)
    plots = plot_confusions(out, data, models)
    if data.gold is not None:  # teacher and students: confidence against accuracy
        plot_reliability(models, run.plot("reliability.png"))
        plots.append("reliability.png")
    first = next(k for k in models if k != "teacher")
    defer = models[first]["defer"]
    plot_coverage(defer["curve"], defer["picked"], defer["target"], run.plot("coverage.png"))
    students = list(named.values())
    metrics = {
        "labels": data.labels,
        "split": cfg.eval_split,
        "rows": len(data.rows),
        "rows_failed": data.n_failed,
        "majority_label": majority,
        "majority_accuracy": majority_acc,
        "calibration": manifest.get("calibration", {}),
        "gold_shares": {lab: float((data.gold == i).mean()) for i, lab in enumerate(data.labels)}
        if data.gold is not None
        else None,
        "teacher": models["teacher"],
        "student": models[first],
        "students": {k: v for k, v in models.items() if k != "teacher"},
        "agreement": models[first]["agreement"],
        "kappa": models[first]["kappa"],
        "retention": models[first]["retention"],
        "macro_f1_retention": models[first]["macro_f1_retention"],
        "worst_class": models[first]["worst_class"],
        "worst_class_retention": models[first]["worst_class_retention"],
        "learning_curve": learning_curve(
            Path(students[0]), texts, data.gold, data.teacher_probs.argmax(1), cfg.eval_batch_size, device
        ),
    }
    metrics["ceiling"] = gold_ceiling(Path(students[0]), data, metrics["student"], device, cfg.eval_batch_size)
    metrics["review"] = review_metrics(out, data, named, device, cfg.eval_batch_size)
    summary_path = Path(students[0]) / "train_summary.json"
    metrics["warnings"] = diagnose(metrics, json.loads(summary_path.read_text()) if summary_path.is_file() else None)
    write_json(run.metrics, metrics)
    config_text = yaml.safe_dump(asdict(cfg), sort_keys=False)
    write_text(run.evaluate_config, config_text)
    spec = TeacherSpec.of(manifest)  # the teacher as its backend described itself
    report = ReportData(
        task=manifest["task"]["name"],
        teacher=spec.model or spec.backend,
        split=cfg.eval_split,
        n_rows=len(data.rows),
        n_failed=data.n_failed,
        labels=data.labels,
        majority_label=majority,
        majority_accuracy=majority_acc,
        models=models,
        speed_rows=len(texts[: cfg.speed_rows]),
        device=str(device),
        plots=plots,
        config=config_text,
        warnings=metrics["warnings"],
        learning_curve=metrics["learning_curve"],
        defer=defer,
        review=metrics["review"],
        ceiling=metrics["ceiling"],
    )
    write_text(run.report, render_report(report))
    for name, path in named.items():  # each student's card and distillery_student.json get its own row
        record_evaluation(Path(path), models[name], metrics, str(device))
    if cfg.push_to_hub:
        print(f"evaluate: uploaded {students[0]} to {push_to_hub(students[0], cfg.push_to_hub)}")
    return metrics


def eval_rows(cfg: EvaluateConfig, frame: pd.DataFrame, manifest: dict) -> EvalRows:
    """The --eval-split rows with their gold labels (on every row or none) and the teacher's probabilities."""
    labels = manifest["labels"]
    rows = frame if cfg.eval_split == "all" else frame[frame["split"] == cfg.eval_split]
    n_failed = int((rows["error_type"] != "").sum())
    rows = rows[rows["error_type"] == ""]
    if len(rows) == 0:
        raise UserError(
            f"evaluate: expected annotated {cfg.eval_split} rows; found none; annotate with --test-fraction "
            "> 0 or pass --eval-split all"
        )
    n_gold = int((rows["gold"] != "").sum())
    if 0 < n_gold < len(rows):
        raise UserError(
            f"evaluate: expected gold labels on every {cfg.eval_split} row or on none; found {n_gold} of "
            f"{len(rows)}; fix the label column"
        )
    label_id = {lab: i for i, lab in enumerate(labels)}
    gold = rows["gold"].map(label_id).to_numpy() if n_gold else None  # without gold: agreement, κ and speed only
    return EvalRows(frame, rows, labels, n_failed, gold, teacher_probabilities(rows, labels))


def teacher_metrics(data: EvalRows, manifest: dict) -> dict:
    """The teacher against gold, and its speed and size as annotate recorded them (the teacher is never
    loaded again to time it)."""
    m = data.vs_gold(data.teacher_probs)
    spec = TeacherSpec.of(manifest)
    recorded = {
        "rows_per_s": manifest.get("teacher_rows_per_s"),
        "batch_size": manifest.get("teacher_batch_size"),
        "parameters": spec.parameters,
        "size_bytes": spec.size_bytes,
    }
    m.update({key: value for key, value in recorded.items() if value is not None})
    m["label_shares"] = {lab: float((data.teacher_probs.argmax(1) == i).mean()) for i, lab in enumerate(data.labels)}
    return m


def student_metrics(cfg: EvaluateConfig, data: EvalRows, path: str, device, teacher: dict) -> dict:
    """One student against gold and the teacher, with intervals, its answer-or-defer curve, speed and size."""
    student = load_student(path, device)
    if student.labels != data.labels:
        raise UserError(f"{path}: expected a student for labels {data.labels}; found {student.labels}")
    texts, teacher_pred = data.rows["text"].tolist(), data.teacher_probs.argmax(1)
    probs = student.probabilities(texts, cfg.eval_batch_size)
    m = data.vs_gold(probs)
    m.update(agreement_metrics(probs.argmax(1), teacher_pred, len(data.labels)))
    m["retention"] = m["accuracy"] / teacher["accuracy"] if data.gold is not None and teacher["accuracy"] else None
    m.update(class_retention(m, teacher))  # macro-F1 and the worst class's F1, student ÷ teacher
    ci = bootstrap_intervals(teacher_pred, probs.argmax(1), data.gold, len(data.labels))
    m["ci"] = {
        "accuracy": ci.get("student_accuracy"),
        "agreement": ci["agreement"],
        "kappa": ci["kappa"],
        "retention": ci.get("retention"),
    }
    teacher.setdefault("ci", {"accuracy": ci.get("teacher_accuracy")})
    m["defer"] = answer_or_defer(probs, teacher_pred, data.gold, cfg.target_agreement)
    speed_texts = texts[: cfg.speed_rows]
    if speed_texts:
        student.probabilities(speed_texts[: cfg.eval_batch_size], cfg.eval_batch_size)  # warm-up
        seconds, _ = _time(student.probabilities, speed_texts, cfg.eval_batch_size)
        m["rows_per_s"] = len(speed_texts) / seconds
        if teacher.get("rows_per_s"):
            m["speedup"] = m["rows_per_s"] / teacher["rows_per_s"]
    m.update(
        parameters=student.parameters,
        size_bytes=size_on_disk(path),
        batch_size=cfg.eval_batch_size,
        evaluated_base=student.evaluated_base,
    )
    return m


def majority_baseline(data: EvalRows) -> tuple[str | None, float | None]:
    """The majority gold label of the training rows (the prior a reader should beat) and its accuracy here."""
    if data.gold is None:
        return None, None
    train_gold = data.frame.loc[(data.frame["split"] == "train") & (data.frame["gold"] != ""), "gold"]
    majority = (train_gold if len(train_gold) else data.rows["gold"]).value_counts().idxmax()
    return majority, float((data.rows["gold"] == majority).mean())


def plot_confusions(out: Path, data: EvalRows, models: dict) -> list[str]:
    """Confusion matrices of every model against gold and of every student against the teacher; their file names."""
    plots = []
    pairs = [(name, m["confusion"], "gold") for name, m in models.items()] if data.gold is not None else []
    pairs += [(name, m["confusion_vs_teacher"], "teacher") for name, m in list(models.items())[1:]]
    for name, confusion, against in pairs:
        plots.append(f"confusion_{_file_name(name)}_vs_{against}.png")
        plot_confusion(confusion, data.labels, f"{name} vs {against}", against, name, out / plots[-1])
    return plots


def answer_or_defer(probs: np.ndarray, teacher_pred: np.ndarray, gold: np.ndarray | None, target: float) -> dict:
    """The student's coverage curve and, for ``target`` > 0, the threshold ``predict --defer`` uses."""
    confidence, pred = probs.max(1), probs.argmax(1)
    agree = pred == teacher_pred
    picked = pick_threshold(confidence, agree, target) if target else None
    return {
        "target": target or None,
        "picked": picked,
        "curve": coverage_curve(confidence, agree, None if gold is None else pred == gold),
    }


def record_evaluation(student_dir: Path, m: dict, metrics: dict, device: str) -> None:
    """Put the evaluation and the deferral threshold into the student's distillery_student.json
    (predict reads the threshold there) and rewrite its model card."""
    meta = StudentMeta.read(student_dir)
    if meta is None:  # not a Distillery student: nothing to update
        return
    teacher = metrics["teacher"]
    meta.evaluation = {
        "split": metrics["split"],
        "rows": metrics["rows"],
        "majority_accuracy": metrics["majority_accuracy"],
        "teacher_accuracy": teacher["accuracy"],
        "teacher_macro_f1": teacher["macro_f1"],
        "teacher_ci": teacher.get("ci", {}).get("accuracy"),
        **{
            k: m.get(k)
            for k in (
                "accuracy",
                "macro_f1",
                "agreement",
                "kappa",
                "retention",
                "ci",
                "rows_per_s",
                "speedup",
                "batch_size",
            )
        },
        "device": device,
    }
    picked = m["defer"]["picked"]
    target = m["defer"]["target"]  # None: no target asked (--target-agreement 0); else a threshold or none passed
    meta.defer = {**picked, "target": target} if picked else {"threshold": None, "target": target} if target else None
    meta.write(student_dir)
    write_card(student_dir)
