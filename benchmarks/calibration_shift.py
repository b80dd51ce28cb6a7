"""Teacher calibration under label shift: which mode holds on imbalanced sets?

    python benchmarks/calibration_shift.py [--students] [--seeds 0,1,2]

Needs the annotations of benchmarks/real_sets.py (raw log-probs of the embedded teacher,
SmolLM2-135M-Instruct). For each scenario of real_sets.SCENARIOS (SST-2 balanced, 80/20 and
20/80; binary tweets balanced and 75/25; 3-way tweets as shipped; long 75/25 reviews) every
calibration mode is fitted on the scenario's annotated rows (train + test, as a user's run
has them; `gold-K` on K gold-labelled training rows, 5 random draws of K rows: mean ± std) and
the teacher is scored on the test rows: accuracy, macro-F1, ECE, the share of its answers
that are the majority label, and the majority-class baseline.

`--students` also distils a MiniLM student (distill's defaults) from the training rows of the
imbalanced scenarios under none / mean / content-free / gold-200 (calibrated by the
real annotate code path) and scores it on the test rows against gold, one run per seed
(default seed 0 only, the two short-text scenarios: ~8 min on 2 CPU cores).
Prints tables and writes benchmarks/results/calibration_shift.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import numpy as np
from common import ROOT, print_table, write_result
from kd_sweep import mean_std
from real_sets import SCENARIOS, content_free_bias, materialize, scenario

from distillery.annotate.calibration import fit_calibration, resolve_mode
from distillery.core.annotations import label_columns
from distillery.distill import DistillConfig, distill, load_trained_student
from distillery.evaluation import classification_metrics, predict_student

MODES = [
    "none",
    "mean",
    "content-free",
    "mean+em",
    "content-free+em",
    "mean+gmm",
    "content-free+gmm",
    "auto (no gold)",
    "gold-25",
    "gold-50",
    "gold-100",
    "gold-200",
]
STUDENT_MODES = ["none", "mean", "content-free", "gold"]  # auto is gold with gold rows, content-free without (binary)
STUDENT_SCENARIOS = ["sst2 80/20", "tweets2 75/25"]  # long 75/25 takes ~4 min a student: --student-scenarios adds it


def teacher_rows(name: str, draws: int) -> list[dict]:
    rows = scenario(name)
    labels = rows.attrs["labels"]
    set_name = SCENARIOS[name][0]
    raw = rows[label_columns(labels, raw=True)].to_numpy(float)
    gold = rows["gold"].map(labels.index).to_numpy()
    is_test, is_train = (rows["split"] == "test").to_numpy(), (rows["split"] == "train").to_numpy()
    majority = np.bincount(gold[is_train], minlength=len(labels)).argmax()
    cf = np.asarray(content_free_bias(set_name))
    out = []
    for mode in MODES:
        fits = []
        if mode.startswith("gold"):
            k = int(mode.split("-")[1])
            train_idx = np.flatnonzero(is_train)
            for draw in range(draws):
                pick = np.random.default_rng(draw).choice(train_idx, size=k, replace=False)
                fits.append(fit_calibration("gold", raw, gold_raw=raw[pick], gold=gold[pick]))
        else:
            fits.append(
                fit_calibration(
                    resolve_mode("auto", 0, len(labels)) if mode == "auto (no gold)" else mode, raw, content_free=cf
                )
            )
        scores = []
        for cal in fits:
            probs = np.exp(cal.apply(raw[is_test]))
            m = classification_metrics(probs, gold[is_test], labels)
            scores.append({**m, "majority_share": float((probs.argmax(1) == majority).mean())})
        acc = mean_std([s["accuracy"] for s in scores])
        row = {
            "scenario": name,
            "mode": mode,
            "accuracy": acc[0],
            "accuracy_std": acc[1] if len(fits) > 1 else None,
            "macro_f1": float(np.mean([s["macro_f1"] for s in scores])),
            "ece": float(np.mean([s["ece"] for s in scores])),
            "majority_share": float(np.mean([s["majority_share"] for s in scores])),
            "majority_baseline": float((gold[is_test] == majority).mean()),
            "test_rows": int(is_test.sum()),
        }
        if fits[0].prior is not None:
            row["em_prior_majority"] = float(fits[0].prior[majority])
            row["true_share_majority"] = float((gold == majority).mean())
        out.append(row)
    return out


def student_rows(name: str, seeds: list[int]) -> list[dict]:
    rows = scenario(name)
    labels = rows.attrs["labels"]
    test = rows[rows["split"] == "test"]
    gold = test["gold"].map(labels.index).to_numpy()
    out = []
    for mode in STUDENT_MODES:
        run = materialize(rows, SCENARIOS[name][0], ROOT / "data" / "runs" / "bench-calshift", mode)
        accs = []
        for seed in seeds:
            student = distill(DistillConfig(out=str(run), seed=seed))
            tokenizer, model = load_trained_student(student, "cpu")
            accs.append(float((predict_student(model, tokenizer, test["text"].tolist(), 32).argmax(1) == gold).mean()))
            shutil.rmtree(student)
        acc = mean_std(accs)
        out.append(
            {
                "scenario": name,
                "mode": mode,
                "student_accuracy": acc[0],
                "student_accuracy_std": acc[1],
                "per_seed": accs,
            }
        )
        print(f"  {name} / {mode}: student {acc[0]:.4f} ± {acc[1]:.4f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--draws", type=int, default=5, help="random draws of the K gold rows for gold-K")
    parser.add_argument(
        "--students", action="store_true", help="also distil MiniLM students from the imbalanced scenarios"
    )
    parser.add_argument("--student-scenarios", default=",".join(STUDENT_SCENARIOS))
    parser.add_argument("--seeds", default="0", help="student seeds")
    parser.add_argument("--name", default="calibration_shift", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    started = time.perf_counter()
    teacher = [r for name in args.scenarios.split(",") for r in teacher_rows(name, args.draws)]
    print_table(
        teacher,
        ["scenario", "mode", "accuracy", "accuracy_std", "macro_f1", "ece", "majority_share", "majority_baseline"],
    )
    students = []
    if args.students:
        seeds = [int(s) for s in args.seeds.split(",")]
        students = [r for name in args.student_scenarios.split(",") for r in student_rows(name, seeds)]
        print_table(students, ["scenario", "mode", "student_accuracy", "student_accuracy_std"])
    write_result(
        args.name,
        {
            "command": " ".join(["python benchmarks/calibration_shift.py", *sys.argv[1:]]),
            "teacher": "SmolLM2-135M-Instruct (embedded)",
            "wall_s": time.perf_counter() - started,
            "results": teacher,
            "students": students,
        },
    )


if __name__ == "__main__":
    main()
