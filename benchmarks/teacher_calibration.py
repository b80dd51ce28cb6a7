"""Teacher calibration: none / mean / content-free / gold, and the student distilled from each.

    python benchmarks/teacher_calibration.py [--run data/runs/bench-quality-sst2] [--calibrate-on 100]

Copies the SST-2 annotation run of benchmarks/quality.py once per mode and re-calibrates it
with `distillery annotate --calibrate MODE` (no row is annotated again: the raw log-probs are in
the chunks; content-free scores a few content-free inputs). `gold` fits a per-label bias and a
temperature on the first --calibrate-on training rows with gold labels. For each mode: teacher
accuracy, macro-F1 and ECE on the test rows, then MiniLM students distilled from it (same
settings as benchmarks/kd_sweep.py, α=0.5, T=2, 3 seeds) scored against gold. Prints a table
and writes benchmarks/results/teacher_calibration.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from common import ROOT, print_table, write_result
from kd_sweep import mean_std, test_rows, train_and_score

from distillery.annotate import AnnotateConfig, annotate, read_annotations
from distillery.evaluation import classification_metrics

RUN = ROOT / "data" / "runs" / "bench-quality-sst2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=RUN)
    parser.add_argument("--calibrate-on", type=int, default=100)
    parser.add_argument(
        "--train-rows",
        type=int,
        default=1000,
        help="first N annotated training rows (10%% of them pick the checkpoint)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    if not (args.run / "annotations" / "manifest.json").is_file():
        sys.exit(f"no annotations in {args.run}: run benchmarks/quality.py --sets sst2 first, or pass --run")
    started = time.perf_counter()
    _, manifest = read_annotations(args.run / "annotations")
    results = []
    for mode in ("none", "mean", "content-free", "gold"):
        run = ROOT / "data" / "runs" / f"bench-calibration-{mode}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(args.run / "annotations", run / "annotations")
        annotate(
            AnnotateConfig(
                **{**manifest["config"], "out": str(run), "calibrate": mode, "calibrate_on": args.calibrate_on}
            )
        )
        test = test_rows(run / "annotations")
        teacher = classification_metrics(test["teacher_probs"], test["gold"], test["labels"])
        students = [train_and_score(run, 0.5, 2.0, int(seed), args, test) for seed in args.seeds.split(",")]
        acc = mean_std([s["accuracy"] for s in students])
        results.append(
            {
                "mode": mode,
                "teacher_accuracy": teacher["accuracy"],
                "teacher_macro_f1": teacher["macro_f1"],
                "teacher_ece": teacher["ece"],
                "student_accuracy_mean": acc[0],
                "student_accuracy_std": acc[1],
                "calibration": test["calibration"],
                "per_seed": students,
            }
        )
        print(
            f"  {mode}: teacher {teacher['accuracy']:.4f} (ECE {teacher['ece']:.4f}), student {acc[0]:.4f} ± "
            f"{acc[1]:.4f}",
            flush=True,
        )
    print_table(
        results,
        [
            "mode",
            "teacher_accuracy",
            "teacher_macro_f1",
            "teacher_ece",
            "student_accuracy_mean",
            "student_accuracy_std",
        ],
    )
    write_result(
        "teacher_calibration",
        {
            "command": " ".join(["python benchmarks/teacher_calibration.py", *sys.argv[1:]]),
            "run": str(args.run),
            "calibrate_on": args.calibrate_on,
            "train_rows": args.train_rows,
            "epochs": args.epochs,
            "wall_s": time.perf_counter() - started,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
