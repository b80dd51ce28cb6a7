"""Gold labels in minutes (issue #18): a 200-row review queue, answered by the shared sets' gold
labels standing in for a person, against 200 gold rows drawn at random.

    python benchmarks/review.py [--scenarios "sst2 80/20,tweets2 75/25"] [--seeds 0,1,2] [--stage
    first|arms|coverage|all]

Per scenario and seed (rows resampled from the annotated pools of benchmarks/real_sets.py):

1. ``first``: the user's first run. The training rows' gold labels are removed, so ``--calibrate
   auto`` falls back to content-free (two labels) or mean calibration; a MiniLM student is
   distilled with every default. This is the run a user reviews.
2. ``arms``: ``review`` builds a 200-row queue from the first run (100 random test rows,
   stratified over the teacher's labels; 100 doubtful training rows); the gold labels answer it
   and are imported; the annotations are recalibrated (``--calibrate auto`` -> ``reviewed``), a
   new student is distilled (human labels as hard labels where they exist) and evaluated against
   gold on every test row. The ``gold-200`` arm imports gold for 200 training rows drawn at
   random instead and runs the same steps. Targets: teacher within 1 point of gold-200, student
   within one standard deviation (over seeds) of the gold-200 student; the doubtful part finds at
   least twice as many teacher errors per row as the random part.
3. ``coverage``: 50 draws of a 100-row random part on each first run; how often the interval
   evaluate reports for the teacher's accuracy holds its accuracy on all test rows (target >= 90%).
4. ``signals``: teacher errors per row among the 100 most doubtful training rows of each first run,
   by rule (margin; margin + cleanlab, the default; + the student's disagreement).

Results: benchmarks/results/NAME.json (``--name``, default review).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

import numpy as np
import pandas as pd
from common import ROOT, machine, print_table, read_results, write_result
from real_sets import materialize, scenario

from distillery.annotate import read_annotations
from distillery.annotate.calibration import calibrate_chunks, resolve_mode
from distillery.annotate.chunks import ChunkStore
from distillery.core.annotations import teacher_probabilities
from distillery.core.reviewed import read_queue, reviewed_labels
from distillery.distill import DistillConfig, distill
from distillery.evaluation import EvaluateConfig, evaluate
from distillery.evaluation.metrics import stratified_accuracy
from distillery.review import ReviewConfig, review
from distillery.review.queue import doubt_scores, label_issues, stratified_sample
from distillery.student import load_student

RUNS = ROOT / "data" / "runs"
# name -> (pool of real_sets.py, label shares of train and test rows, train rows, test rows)
GRID = {
    "sst2 80/20": ("sst2", 0.8, 500, 555),
    "tweets2 75/25": ("tweets2-2k", 0.75, 500, 700),
    "agnews 55/25/15/5": ("agnews-2k", (0.55, 0.25, 0.15, 0.05), 500, 400),
}


def base_dir(name: str, seed: int):
    return RUNS / f"bench-review-{name.replace(' ', '-').replace('/', '-')}-s{seed}"


def user_rows(name: str, seed: int) -> pd.DataFrame:
    """The scenario's rows as a user has them: gold on the test rows only (for the measurement)."""
    rows = scenario(name, seed, None, GRID)
    return rows.assign(gold=rows["gold"].where(rows["split"] == "test", ""))


def first(name: str, seed: int) -> dict:
    """The first run: annotations calibrated without gold, a student distilled with the defaults."""
    out = base_dir(name, seed) / "first"
    if (out / "student" / "train_summary.json").is_file():
        return {"scenario": name, "seed": seed, "first": "kept"}
    started = time.perf_counter()
    rows = user_rows(name, seed)
    materialize(rows, GRID[name][0], out, "auto")
    distill(DistillConfig(out=str(out), seed=seed, device="cpu", overwrite=True))
    _, manifest = read_annotations(out / "annotations")
    return {
        "scenario": name,
        "seed": seed,
        "calibration": manifest["calibration"]["mode"],
        "seconds": time.perf_counter() - started,
    }


def _copy_run(first_dir, out) -> None:
    """A new run folder with the first run's annotations (its student stays where it is)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copytree(first_dir / "annotations", out / "annotations")


def _recalibrate(out) -> dict:
    """``--calibrate auto`` on a rerun, as annotate does it: refit on the imported human labels from the stored raw
    log-probs."""
    frame, manifest = read_annotations(out / "annotations")
    reviewed = reviewed_labels(out, frame["id"])
    mode = resolve_mode("auto", 0, len(manifest["labels"]), False, len(reviewed))
    store = ChunkStore(out / "annotations", manifest["fingerprint"], {})
    return calibrate_chunks(store, manifest["labels"], mode, None, requested="auto", reviewed=reviewed)


def _answer(out, ids, gold: dict, name: str) -> None:
    """The person: the shared set's gold label for every row of ``ids``, imported through the CSV path."""
    answers = pd.DataFrame({"id": list(ids), "label": [gold[i] for i in ids], "annotator": "gold"})
    path = out / f"{name}-answers.csv"
    answers.to_csv(path, index=False)
    review(ReviewConfig(out=str(out), import_file=str(path)))


def _train_and_score(out, seed: int) -> dict:
    distill(DistillConfig(out=str(out), seed=seed, device="cpu", overwrite=True))
    metrics = evaluate(EvaluateConfig(out=str(out), speed_rows=0, target_agreement=0, device="cpu", overwrite=True))
    return {
        "teacher acc": metrics["teacher"]["accuracy"],
        "student acc": metrics["student"]["accuracy"],
        "teacher macro-F1": metrics["teacher"]["macro_f1"],
        "student macro-F1": metrics["student"]["macro_f1"],
        "calibration": metrics["calibration"].get("mode"),
        "review": metrics.get("review"),
    }


def arms(name: str, seed: int) -> list[dict]:
    """The review arm and the gold-200 arm of one scenario and seed (after ``first``)."""
    base = base_dir(name, seed)
    rows = scenario(name, seed, None, GRID)
    gold = dict(zip(rows["id"], rows["gold"]))
    results = []
    started = time.perf_counter()
    out = base / "reviewed"
    _copy_run(base / "first", out)
    review(ReviewConfig(out=str(out), student=str(base / "first" / "student"), device="cpu", seed=seed))
    queue = read_queue(out)
    _answer(out, queue["id"], gold, "queue")
    queue = queue.assign(gold=queue["id"].map(gold))
    errors = {part: float((g["teacher_label"] != g["gold"]).mean()) for part, g in queue.groupby("part")}
    calibration = _recalibrate(out)
    results.append(
        {
            "scenario": name,
            "seed": seed,
            "arm": "review",
            "fitted on": calibration.get("fitted_on"),
            "errors/row doubtful": errors.get("doubtful"),
            "errors/row random": errors.get("random"),
            **_train_and_score(out, seed),
            "seconds": time.perf_counter() - started,
        }
    )
    started = time.perf_counter()
    out = base / "gold-200"
    if (
        out / "bench_result.json"
    ).is_file():  # the gold-200 arm does not depend on the queue's rules: kept from an earlier run
        return results + [json.loads((out / "bench_result.json").read_text())]
    _copy_run(base / "first", out)
    train_ids = rows.loc[rows["split"] == "train", "id"]
    _answer(out, train_ids.sample(n=200, random_state=seed).tolist(), gold, "gold-200")
    calibration = _recalibrate(out)
    results.append(
        {
            "scenario": name,
            "seed": seed,
            "arm": "gold-200",
            "fitted on": calibration.get("fitted_on"),
            **_train_and_score(out, seed),
            "seconds": time.perf_counter() - started,
        }
    )
    (out / "bench_result.json").write_text(json.dumps(results[-1], default=str))
    return results


def coverage(name: str, seed: int, draws: int = 50, n: int = 100) -> dict:
    """How often the random part's interval holds the accuracy on all test rows (teacher and first student)."""
    first_dir = base_dir(name, seed) / "first"
    frame, manifest = read_annotations(first_dir / "annotations")
    labels = manifest["labels"]
    test = frame[(frame["split"] == "test") & (frame["error_type"] == "")].reset_index(drop=True)
    teacher = test["teacher_label"].to_numpy()
    student = np.array(labels)[load_student(first_dir / "student").probabilities(test["text"].tolist()).argmax(1)]
    gold = test["gold"].to_numpy()
    out = {"scenario": name, "seed": seed, "test rows": len(test), "draws": draws, "sample rows": n}
    for who, pred in (("teacher", teacher), ("student", student)):
        truth = float((pred == gold).mean())
        held, widths = 0, []
        for draw in range(draws):
            picked = stratified_sample(pd.Series(teacher), n, np.random.default_rng([seed, draw]))
            est = stratified_accuracy(pred[picked] == gold[picked], teacher[picked], teacher)
            held += est["low"] <= truth <= est["high"]
            widths.append(est["high"] - est["low"])
        out.update(
            {
                f"{who} acc (all test rows)": truth,
                f"{who} coverage": held / draws,
                f"{who} mean width": float(np.mean(widths)),
            }
        )
    return out


def signals(name: str, seed: int, k: int = 100) -> dict:
    """Teacher errors per row among the ``k`` most doubtful training rows of the first run, by rule:
    the margin alone, margin + cleanlab (the default), margin + cleanlab + the student's disagreement."""
    first_dir = base_dir(name, seed) / "first"
    gold = dict(zip(*scenario(name, seed, None, GRID)[["id", "gold"]].to_numpy().T))
    frame, manifest = read_annotations(first_dir / "annotations")
    labels = manifest["labels"]
    rows = frame[(frame["split"] == "train") & (frame["error_type"] == "")].reset_index(drop=True)
    probs = teacher_probabilities(rows, labels)
    wrong = probs.argmax(1) != rows["id"].map(gold).map(labels.index).to_numpy()
    student_probs, embeddings = load_student(first_dir / "student").embeddings(rows["text"].tolist())
    issues = label_issues(embeddings, probs.argmax(1), seed)
    disagree = student_probs.argmax(1) != probs.argmax(1)

    def errors(score):
        return float(wrong[np.argsort(-score, kind="stable")[:k]].mean())

    return {
        "scenario": name,
        "seed": seed,
        "teacher errors (all training rows)": float(wrong.mean()),
        "student disagrees": float(disagree.mean()),
        "margin": errors(doubt_scores(probs, None)),
        "margin + cleanlab": errors(doubt_scores(probs, issues)),
        "margin + cleanlab + disagreement": errors(doubt_scores(probs, issues) + disagree),
    }


def summarise(results: list[dict]) -> list[dict]:
    """Per scenario: mean ± std over seeds of each arm, and the targets checked."""
    table = []
    for name in dict.fromkeys(r["scenario"] for r in results):
        by_arm = {
            arm: [r for r in results if r["scenario"] == name and r.get("arm") == arm] for arm in ("review", "gold-200")
        }
        if not by_arm["review"] or not by_arm["gold-200"]:
            continue
        mean = {
            (arm, k): float(np.mean([r[k] for r in rs]))
            for arm, rs in by_arm.items()
            for k in ("teacher acc", "student acc")
        }
        std_gold = (
            float(np.std([r["student acc"] for r in by_arm["gold-200"]], ddof=1))
            if len(by_arm["gold-200"]) > 1
            else None
        )
        doubt = float(np.mean([r["errors/row doubtful"] for r in by_arm["review"]]))
        rand = float(np.mean([r["errors/row random"] for r in by_arm["review"]]))
        gap_t = mean[("review", "teacher acc")] - mean[("gold-200", "teacher acc")]
        gap_s = mean[("review", "student acc")] - mean[("gold-200", "student acc")]
        table.append(
            {
                "scenario": name,
                "seeds": len(by_arm["review"]),
                "teacher review / gold-200": f"{mean[('review', 'teacher acc')]:.4f} / "
                f"{mean[('gold-200', 'teacher acc')]:.4f}",
                "teacher within 1 pt": abs(gap_t) <= 0.01 or gap_t > 0,
                "student review / gold-200": f"{mean[('review', 'student acc')]:.4f} / "
                f"{mean[('gold-200', 'student acc')]:.4f}",
                "gold-200 student std": std_gold,
                "student within 1 std": None if std_gold is None else abs(gap_s) <= std_gold or gap_s > 0,
                "errors/row doubtful / random": f"{doubt:.3f} / {rand:.3f}",
                "doubtful >= 2x": doubt >= 2 * rand,
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(GRID))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--stage", default="all", choices=("first", "arms", "coverage", "signals", "all"))
    parser.add_argument("--name", default="review", help="results file name under benchmarks/results/")
    parser.add_argument(
        "--merge",
        default="",
        help="comma-separated results names to merge into NAME (runs made apart, e.g. one "
        "scenario per process); trains nothing",
    )
    args = parser.parse_args()
    if args.merge:
        parts = read_results(args.merge)
        results = [r for part in parts for r in part["results"]]
        covered = [c for part in parts for c in part["coverage"]]
        by_signal = [c for part in parts for c in part.get("signals", [])]
        summary = summarise(results)
        print_table(summary, list(summary[0]))
        if covered:
            print_table(covered, list(covered[0]))
        write_result(
            args.name,
            {
                "command": " ".join(["python benchmarks/review.py", *sys.argv[1:]]),
                "merged": [p["command"] for p in parts],
                "machine": parts[0]["machine"],
                "summary": summary,
                "results": results,
                "coverage": covered,
                "signals": by_signal,
            },
        )
        return
    pairs = [(name.strip(), int(seed)) for name in args.scenarios.split(",") for seed in args.seeds.split(",")]
    started = time.perf_counter()
    for name, seed in pairs:
        if args.stage in ("first", "all"):
            print(json.dumps(first(name, seed)), flush=True)
    results, covered = [], []
    if args.stage in ("arms", "all"):
        for name, seed in pairs:
            results += arms(name, seed)
            print(json.dumps([{k: v for k, v in r.items() if k != "review"} for r in results[-2:]]), flush=True)
        print_table(
            results,
            [
                "scenario",
                "seed",
                "arm",
                "fitted on",
                "teacher acc",
                "student acc",
                "teacher macro-F1",
                "student macro-F1",
                "errors/row doubtful",
                "errors/row random",
                "seconds",
            ],
        )
        summary = summarise(results)
        if summary:
            print_table(summary, list(summary[0]))
    if args.stage in ("coverage", "all"):
        covered = [coverage(name, seed) for name, seed in pairs]
        print_table(covered, list(covered[0]))
    by_signal = []
    if args.stage in ("signals", "all"):
        by_signal = [signals(name, seed) for name, seed in pairs]
        print_table(by_signal, list(by_signal[0]))
    if args.stage != "first":
        write_result(
            args.name,
            {
                "command": " ".join(["python benchmarks/review.py", *sys.argv[1:]]),
                "machine": machine(),
                "wall_s": time.perf_counter() - started,
                "summary": summarise(results) if results else [],
                "results": results,
                "coverage": covered,
                "signals": by_signal,
            },
        )


if __name__ == "__main__":
    main()
