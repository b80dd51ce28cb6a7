"""The active loop: test + seed rows -> annotate -> distill -> score the pool -> pick rows -> repeat.

Run it with::

    distillery active --budget 600                                        # the built-in tweets
    distillery active --data pool.csv --budget 2000 --strategy margin --out data/runs/active

Every teacher answer is a normal annotation row in ``OUT/annotations`` (one chunk store that
grows by whole chunks each round); each round's student is ``OUT/learning_curve/student-round-NNN``
(so ``evaluate`` shows the curve), the last one is copied to ``OUT/student`` and evaluated on
the test rows. ``OUT/active/state.json`` records every pick before the teacher sees it, so a
killed run resumes mid-round without asking the teacher again; ``OUT/active/rounds.jsonl`` logs
each round's rows, the strategy's scores and the student's test metrics.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from distillery.active.config import ActiveConfig
from distillery.active.strategies import Candidates, pick, scores
from distillery.annotate import AnnotateConfig, annotate, load_rows, load_task, read_annotations
from distillery.core.errors import UserError
from distillery.core.fingerprints import rows_fingerprint
from distillery.core.lock import locked
from distillery.core.registry import active_strategies
from distillery.core.run import Run
from distillery.core.rundir import (
    check_folder,
    claim_folder,
    install,
    make_folder,
    remove_leftovers,
    remove_owned,
    temporary_name,
    write_csv,
    write_json,
    write_text,
)
from distillery.core.studentmeta import STUDENT_FILE
from distillery.distill import DistillConfig, distill
from distillery.evaluation import EvaluateConfig, evaluate
from distillery.evaluation.evaluate import check_report_writable
from distillery.student import load_student, student_kind

__all__ = ["active"]


def active(cfg: ActiveConfig, source: AnnotateConfig, train: DistillConfig, report: EvaluateConfig) -> dict:
    """Run (or resume) the loop until the budget is spent or the test agreement stops improving.

    Returns the final metrics of ``evaluate`` (``None`` values when no round finished). One
    process at a time writes ``OUT``.
    """
    with locked(source.out, "active"):
        return _active(cfg, source, train, report)


def _active(cfg: ActiveConfig, source: AnnotateConfig, train: DistillConfig, report: EvaluateConfig) -> dict:
    run = Run.of(source)  # the run folder: the last round's student goes to its student folder
    out, work = run.out, run.active
    labels = load_task(source.task, source.labels or None).labels
    pool = load_rows(replace(source, test_fraction=0.0), labels)
    fingerprint = {
        "data": source.data,
        "limit": source.limit,
        "labels": labels,
        "strategy": cfg.strategy,
        "test_rows": cfg.test_rows,
        "seed_rows": cfg.seed_rows,
        "round_rows": cfg.round_rows,
        "seed": source.seed,
        "pool": rows_fingerprint(pool, ["id", "text", "gold"]),
    }
    pool = pool.set_index("id")
    has_gold = bool((pool["gold"] != "").all())
    check_start(cfg, train, len(pool), has_gold)  # what the inputs already tell, before the first teacher call
    if source.restart_annotations:
        _start_over(run)
    remove_leftovers(out)  # a killed round's staged student
    check_folder(run.student, source.overwrite)  # before any teacher call: the last round's student goes there
    check_report_writable(replace(report, out=str(out)))
    claim_folder(work, overwrite=False)
    state = _load_state(work, fingerprint)
    if state["selected"]:
        _save(work, state, pool)  # the selection file is rebuilt from the state on every start
    chunk = math.gcd(cfg.test_rows, cfg.seed_rows, cfg.round_rows)  # every full round ends on a chunk boundary
    settings = source.settings
    if cfg.budget_cost:  # a backend that charges (openai) stops at its --max-cost; --budget-cost sets it
        if not hasattr(settings, "max_cost"):
            raise UserError(
                f"--budget-cost: applies to a backend that charges (--backend openai); found "
                f"--backend {source.backend}; "
                "leave --budget-cost out"
            )
        settings = replace(settings, max_cost=cfg.budget_cost)
    teacher_cfg = replace(source, settings=settings).asking_about(
        data=str(work / "selected.csv"),
        label_column="gold" if has_gold else "",
        id_column="id",
        split_column="split",
        test_fraction=0.0,
        chunk_size=chunk,
        seed=source.seed,
    )
    print(
        f"active: pool of {len(pool)} rows, budget {cfg.budget} teacher calls, strategy {cfg.strategy}; "
        f"{len(state['selected'])} rows already chosen, {sum(r.get('done', False) for r in state['rounds'])} "
        "rounds done"
    )
    rng = np.random.default_rng(source.seed)
    while True:
        if not state["rounds"] or state["rounds"][-1].get("done"):
            reason = _stop_reason(cfg, state, len(pool))
            if reason:
                print(f"active: stopping: {reason}")
                break
            _open_round(cfg, state, pool, work, rng, source.seed)
            _save(work, state, pool)
        r = state["rounds"][-1]
        started = time.perf_counter()
        annotate(teacher_cfg, grows=True)
        manifest = run.manifest
        if json.loads(manifest.read_text()).get("status") != "complete":  # --budget-cost reached mid-round
            print(
                "active: stopping: the teacher's cost budget is spent; the chosen rows stay recorded (rerun "
                "with a larger budget to go on)"
            )
            break
        student = run.share_student(f"round-{r['round']:03d}")
        previous = [x for x in state["rounds"] if x.get("done")]
        warm = cfg.warm_start and previous and student_kind(train.student_kind).warm_start
        if not (student / "train_summary.json").is_file():
            distill(
                replace(
                    train,
                    out=str(out),
                    annotations="",
                    student=str(student),
                    learning_curve=False,
                    student_model=previous[-1]["student"] if warm else train.student_model,
                ),
                source,
            )
        r.update(
            _score_round(student, out, has_gold),
            student=str(student),
            calls=len(state["selected"]),
            seconds=r.get("seconds", 0.0) + time.perf_counter() - started,
            done=True,
        )
        print(
            f"active: round {r['round']}: {r['calls']} teacher calls, test agreement {r['test_agreement']:.4f}"
            + (f", test accuracy {r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "")
        )
        _save(work, state, pool)

    finished = [r for r in state["rounds"] if r.get("done")]
    if not finished:
        return {}
    final = run.student
    _replace_folder(Path(finished[-1]["student"]), final)
    write_json(work / "config.json", asdict(cfg))
    return evaluate(replace(report, out=str(out), annotations="", students=[str(final)], eval_split="test"))


def check_start(cfg: ActiveConfig, train: DistillConfig, pool_rows: int, has_gold: bool) -> None:
    """Refuse settings that would fail only after the teacher and the first student: no test rows
    (each round is scored on them, and evaluate reads them), a pool with fewer than 2 rows beside
    them to train on, ``--hard-labels gold`` on a pool without gold labels."""
    if cfg.test_rows < 1:
        raise UserError(
            "expected --test-rows of at least 1 (every round's student is scored on the test rows, and the "
            "report evaluates them); found 0; pass --test-rows N"
        )
    if pool_rows < cfg.test_rows + 2:
        raise UserError(
            f"expected a pool of at least --test-rows + 2 = {cfg.test_rows + 2} rows (the test rows and 2 or more "
            f"to train on); found {pool_rows}; lower --test-rows, or pass more rows"
        )
    if train.hard_labels == "gold" and not has_gold:
        raise UserError(
            "--hard-labels gold: expected a gold label on every pool row; found rows without one; "
            "pass --label-column, or use --hard-labels auto"
        )


def _load_state(work: Path, fingerprint: dict) -> dict:
    path = work / "state.json"
    if not path.is_file():
        return {"fingerprint": fingerprint, "selected": [], "rounds": []}
    state = json.loads(path.read_text())
    if state["fingerprint"] != fingerprint:
        changed = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
        what = (
            "the pool's rows changed since the run began" if changed == ["pool"] else f"different {', '.join(changed)}"
        )
        raise UserError(
            f"{path}: written by another active run ({what}); pass another --out, or --restart-annotations to "
            "start over"
        )
    return state


def _stop_reason(cfg: ActiveConfig, state: dict, pool_size: int) -> str:
    calls = len(state["selected"])
    if state["rounds"] and calls >= cfg.budget:
        return f"the budget of {cfg.budget} teacher calls is spent"
    if state["rounds"] and calls >= pool_size:
        return "every pool row is annotated"
    done = [r["test_agreement"] for r in state["rounds"] if r.get("done")]
    if cfg.patience and len(done) > cfg.patience:
        best_before = max(done[: -cfg.patience])
        if max(done[-cfg.patience :]) < best_before + cfg.min_gain:
            return f"the test agreement has not improved by {cfg.min_gain} for {cfg.patience} rounds"
    return ""


def _open_round(cfg: ActiveConfig, state: dict, pool, work: Path, rng: np.random.Generator, seed: int) -> None:
    """Choose the next rows and record them (before the teacher sees them)."""
    chosen = {row["id"] for row in state["selected"]}
    left = [i for i in pool.index if i not in chosen]
    index = len(state["rounds"])
    if index == 0:  # random test and seed rows
        order = rng.permutation(len(left))
        picks = [(left[i], None, "test") for i in order[: cfg.test_rows]]
        picks += [(left[i], None, "train") for i in order[cfg.test_rows : cfg.test_rows + cfg.seed_rows]]
    else:
        k = min(cfg.round_rows, cfg.budget - len(chosen), len(left))
        student = load_student(state["rounds"][-1]["student"])
        strategy = active_strategies.get(cfg.strategy)
        candidates = Candidates(k * strategy.pool_factor)
        round_rng = np.random.default_rng([seed, index])
        counts = np.asarray(state["rounds"][-1].get("label_counts") or [], dtype=float)
        shares = counts / counts.sum() if counts.sum() > 0 else None  # the teacher's labels so far
        for start in range(0, len(left), cfg.pool_chunk):  # chunk by chunk: memory flat in the pool size
            ids = left[start : start + cfg.pool_chunk]
            texts = pool.loc[ids, "text"].tolist()
            if strategy.needs_embeddings:
                probs, emb = student.embeddings(texts)
            else:
                probs, emb = student.probabilities(texts), None
            candidates.add(ids, scores(cfg.strategy, probs, round_rng, shares), emb)
        picks = [(row_id, score, "train") for row_id, score in pick(cfg.strategy, candidates, k, seed + index)]
    state["selected"] += [{"id": i, "round": index, "split": split, "score": s} for i, s, split in picks]
    state["rounds"].append(
        {
            "round": index,
            "rows": len(picks),
            "strategy": "random" if index == 0 else cfg.strategy,
            "score_mean": float(np.mean([s for _, s, _ in picks])) if index else None,
        }
    )


def _save(work: Path, state: dict, pool) -> None:
    """state.json, the selection file the teacher reads (ids in the order they were chosen) and
    rounds.jsonl, each written whole from the state."""
    rows = pool.loc[[s["id"] for s in state["selected"]], ["text", "gold"]].reset_index()
    rows["split"] = [s["split"] for s in state["selected"]]
    write_csv(work / "selected.csv", rows)
    write_json(work / "state.json", state)
    write_text(
        work / "rounds.jsonl",
        "".join(
            json.dumps({k: v for k, v in r.items() if k != "done"}) + "\n" for r in state["rounds"] if r.get("done")
        ),
    )


def _start_over(run: Run) -> None:
    """--restart-annotations: forget an earlier active run (state, annotations, round students): only
    what distillery wrote there is deleted."""
    for folder in (run.active, run.annotations, run.learning_curve):
        remove_owned(folder)


def _replace_folder(source: Path, target: Path) -> None:
    """Copy the student in ``source`` into ``target``: not a whole student (no record) until every file
    is in place; a file of someone else's in ``target`` is never replaced."""
    fresh = make_folder(target.with_name(temporary_name(target.name)))  # clears a killed run's, by its record
    shutil.copytree(source, fresh, ignore=shutil.ignore_patterns(".distillery*"), dirs_exist_ok=True)
    remove_owned(target / STUDENT_FILE)
    install(fresh, target, last=(STUDENT_FILE,))


def _score_round(student_dir: Path, out: Path, has_gold: bool) -> dict:
    """The round's student on the test rows: agreement with the teacher, accuracy against gold."""
    frame, manifest = read_annotations(Run(out).annotations)
    test = frame[(frame["split"] == "test") & (frame["error_type"] == "")]
    probs = load_student(student_dir).probabilities(test["text"].tolist())
    pred = np.array(manifest["labels"])[probs.argmax(1)]
    summary = json.loads((student_dir / "train_summary.json").read_text())
    labelled = frame[(frame["split"] != "test") & (frame["error_type"] == "")]["teacher_label"]
    return {
        "train_rows": summary["train_rows"] + summary["val_rows"],
        # the teacher's labels of the training rows so far, per label: what a class-aware strategy reads
        "label_counts": [int((labelled == label).sum()) for label in manifest["labels"]],
        "test_agreement": float((pred == test["teacher_label"].to_numpy()).mean()),
        "test_accuracy": float((pred == test["gold"].to_numpy()).mean()) if has_gold else None,
    }
