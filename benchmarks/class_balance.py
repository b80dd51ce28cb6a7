"""Keep every class (issue #17): macro-F1 and the worst class's F1 retention, and the student's
calibration before and after temperature scaling, on user-like sets.

    python benchmarks/class_balance.py [--scenarios "long 75/25,sst2 80/20"] [--seeds 0] [--class-weights none,balanced]

Each scenario's rows come from benchmarks/real_sets.py (annotated once by the embedded teacher;
run it first for the sets you name). Per scenario and seed: the annotations are calibrated with
``--calibrate auto`` (no teacher call), a MiniLM student is distilled with every default, and
evaluate scores it. The student is then read again with its temperature set to 1 (the same
weights, unscaled) to measure what temperature scaling changed: ECE, and the answer-or-defer
coverage at a target agreement of 0.90. Results: benchmarks/results/class_balance.json.
"""

from __future__ import annotations

import argparse
import time

from common import ROOT, machine, print_table, write_result
from real_sets import SCENARIOS, materialize, scenario

from distillery.distill import DistillConfig, distill
from distillery.evaluation import EvaluateConfig, evaluate
from distillery.annotate import read_annotations
from distillery.evaluation.evaluate import answer_or_defer, eval_rows
from distillery.evaluation.metrics import expected_calibration_error
from distillery.serve import load_student

TARGET = 0.90


def one(name: str, seed: int, weights: str = "none") -> dict:
    """Distil and evaluate one scenario with every default; returns the row of the results table."""
    rows = scenario(name, seed)
    out = ROOT / "data" / "runs" / f"bench-balance-{name.replace(' ', '-').replace('/', '-')}-s{seed}-{weights}"
    materialize(rows, SCENARIOS[name][0], out, "auto")
    started = time.perf_counter()
    distill(DistillConfig(out=str(out), seed=seed, device="cpu", overwrite=True, class_weights=weights))
    metrics = evaluate(EvaluateConfig(out=str(out), speed_rows=0, target_agreement=TARGET, device="cpu", overwrite=True))
    seconds = time.perf_counter() - started
    teacher, student = metrics["teacher"], metrics["student"]
    # The same student without its temperature: what scaling changed (on evaluate's own rows).
    frame, manifest = read_annotations(out / "annotations")
    data = eval_rows(EvaluateConfig(out=str(out)), frame, manifest)
    loaded = load_student(out / "student")
    scaled_t, loaded.temperature = loaded.temperature, 1.0
    raw = loaded.probabilities(data.rows["text"].tolist())
    raw_defer = answer_or_defer(raw, data.teacher_probs.argmax(1), data.gold, TARGET)
    picked, raw_picked = student["defer"]["picked"], raw_defer["picked"]
    return {
        "scenario": name, "seed": seed, "class weights": weights, "train rows": int((rows["split"] == "train").sum()), "test rows": len(data.rows),
        "calibration": metrics["calibration"].get("mode"),
        "teacher acc": teacher["accuracy"], "student acc": student["accuracy"], "majority": metrics["majority_accuracy"],
        "teacher macro-F1": teacher["macro_f1"], "student macro-F1": student["macro_f1"],
        "retention": metrics["retention"], "macro-F1 retention": metrics["macro_f1_retention"],
        "worst class": metrics["worst_class"], "worst class retention": metrics["worst_class_retention"],
        "teacher ECE": teacher["ece"], "student ECE unscaled": expected_calibration_error(raw, data.gold), "student ECE scaled": student["ece"],
        "temperature": scaled_t,
        f"coverage@{TARGET} unscaled": raw_picked["coverage"] if raw_picked else 0.0,
        f"coverage@{TARGET} scaled": picked["coverage"] if picked else 0.0,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="long 75/25,sst2 80/20")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--class-weights", default="none", help="comma-separated settings of distill --class-weights to compare")
    parser.add_argument("--name", default="class_balance", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    results = [one(name.strip(), int(seed), weights) for name in args.scenarios.split(",") for seed in args.seeds.split(",")
               for weights in args.class_weights.split(",")]
    print_table(results, ["scenario", "seed", "class weights", "teacher acc", "student acc", "macro-F1 retention", "worst class", "worst class retention",
                          "teacher ECE", "student ECE unscaled", "student ECE scaled", f"coverage@{TARGET} unscaled", f"coverage@{TARGET} scaled"])
    write_result(args.name, {"machine": machine(), "target_agreement": TARGET, "results": results})


if __name__ == "__main__":
    main()
