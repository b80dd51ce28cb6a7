"""Quality on real gold-labelled data: embedded teacher vs both students vs gold.

    python benchmarks/quality.py [--sets sst2,tweets] [--train-rows 1000] [--test-rows 1000]

For each set in ../shared/data (skipped with a message when absent): annotate a seeded sample
of the train file plus the test rows with the embedded teacher (SmolLM2-135M-Instruct, mean
calibration), distil the MiniLM encoder (3 epochs) and the SmolLM2 + LoRA student (1 epoch,
lr 1e-3), and evaluate all three against gold on the test rows. SST-2 is evaluated on its whole
872-row validation split; tweets on a label-stratified sample of --test-rows of its test split.
Runs go to data/runs/bench-quality-SET (resumable); prints a table and writes
benchmarks/results/quality.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import ROOT, SETS, SHARED_DATA, build_input, print_table, write_result

from distillery.annotate import AnnotateConfig, annotate
from distillery.distill import DistillConfig, distill
from distillery.evaluation import EvaluateConfig, evaluate

STUDENTS = {  # name -> distill settings
    "minilm": {"student": "encoder"},
    "smollm2-lora": {"student": "llama-lora", "lr": 1e-3, "epochs": 1},
}


def run_set(name: str, args) -> list[dict]:
    out = ROOT / "data" / "runs" / f"bench-quality-{name}"
    test_rows = 0 if name == "sst2" else args.test_rows
    data = build_input(name, args.data_dir, args.train_rows, test_rows, args.seed, out)
    if data is None:
        return []
    timings = {}
    start = time.perf_counter()
    annotate(
        AnnotateConfig(
            data=str(data),
            task=SETS[name][2],
            split_column="split",
            limit=0,
            balance=False,
            out=str(out),
            seed=args.seed,
        )
    )
    timings["annotate_s"] = time.perf_counter() - start
    students = []
    for student, settings in STUDENTS.items():
        if student not in args.students:
            continue
        path = out / f"student-{student}"
        start = time.perf_counter()
        if not (path / "distillery_student.json").is_file():
            distill(DistillConfig(out=str(out), student=str(path), seed=args.seed, **settings))
        timings[f"distill_{student}_s"] = time.perf_counter() - start
        students.append(str(path))
    start = time.perf_counter()
    metrics = evaluate(EvaluateConfig(out=str(out), students=students, speed_rows=64))
    timings["evaluate_s"] = time.perf_counter() - start
    rows = [{"set": name, "model": "teacher", **_pick(metrics["teacher"])}]
    for student, m in metrics["students"].items():
        rows.append({"set": name, "model": student.removeprefix("student-"), **_pick(m)})
    for row in rows:
        row.update(train_rows=args.train_rows, test_rows=metrics["rows"])
    print(f"{name}: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return rows


def _pick(m: dict) -> dict:
    keys = ("accuracy", "macro_f1", "ece", "agreement", "kappa", "retention", "rows_per_s")
    return {k: m.get(k) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="sst2,tweets", help="comma-separated: sst2, tweets")
    parser.add_argument("--students", default="minilm,smollm2-lora", help="comma-separated: minilm, smollm2-lora")
    parser.add_argument(
        "--train-rows", type=int, default=1000, help="rows sampled from the train file for annotation and distillation"
    )
    parser.add_argument(
        "--test-rows", type=int, default=1000, help="tweets: stratified sample of the test file (0 = all 3,534)"
    )
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.students = args.students.split(",")
    started = time.perf_counter()
    rows = [row for name in args.sets.split(",") for row in run_set(name, args)]
    if not rows:
        return
    print_table(
        rows,
        [
            "set",
            "model",
            "accuracy",
            "macro_f1",
            "ece",
            "agreement",
            "kappa",
            "retention",
            "rows_per_s",
            "train_rows",
            "test_rows",
        ],
    )
    write_result(
        "quality",
        {
            "command": " ".join(["python benchmarks/quality.py", *sys.argv[1:]]),
            "teacher": "SmolLM2-135M-Instruct (embedded), mean calibration",
            "wall_s": time.perf_counter() - started,
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
