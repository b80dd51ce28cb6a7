"""Does soft-label KD help? α × T sweep with 3 seeds, MiniLM student, on the SST-2 run.

    python benchmarks/kd_sweep.py [--run data/runs/bench-quality-sst2] [--train-rows 1000] [--seeds 0,1,2]

Reuses the teacher's annotations of benchmarks/quality.py (SST-2: a 1,000-row train sample,
the 872-row validation split as test). Every cell distils the MiniLM-L6 encoder from the first
--train-rows training rows (3 epochs, max length 64, otherwise distill's defaults) and is
scored on the test rows against gold and against the teacher. α=0 is plain cross-entropy on
the teacher's hard labels: T does not enter the loss, so it runs once per seed. Prints mean ± std over seeds and writes
benchmarks/results/kd_sweep.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT, print_table, write_result

from distillery.annotate import read_annotations
from distillery.core.annotations import label_columns
from distillery.distill import DistillConfig, distill, load_trained_student
from distillery.evaluation import predict_student

RUN = ROOT / "data" / "runs" / "bench-quality-sst2"


def train_and_score(run: Path, alpha: float, temperature: float, seed: int, args, test: dict) -> dict:
    """Distil one student, score it on the test rows, delete it. Returns accuracy and agreement."""
    out = run / "sweep-tmp"
    distill(
        DistillConfig(
            out=str(run),
            student=str(out),
            alpha=alpha,
            temperature=temperature,
            seed=seed,
            epochs=args.epochs,
            max_length=64,
            max_train_rows=args.train_rows,
            evals_per_epoch=1,
            min_steps=0,
            lr=5e-5,
        )
    )
    tokenizer, model = load_trained_student(out, "cpu")
    pred = predict_student(model, tokenizer, test["texts"], 64, max_length=64).argmax(1)
    shutil.rmtree(out)
    return {"accuracy": float((pred == test["gold"]).mean()), "agreement": float((pred == test["teacher"]).mean())}


def test_rows(annotations: Path) -> dict:
    frame, manifest = read_annotations(annotations)
    labels = manifest["labels"]
    test = frame[(frame["split"] == "test") & (frame["error_type"] == "")]
    return {
        "texts": test["text"].tolist(),
        "gold": test["gold"].map(labels.index).to_numpy(),
        "teacher_probs": np.exp(test[label_columns(labels)].to_numpy()),
        "teacher": test[label_columns(labels)].to_numpy().argmax(1),
        "labels": labels,
        "calibration": manifest["calibration"],
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=RUN)
    parser.add_argument(
        "--train-rows",
        type=int,
        default=1000,
        help="first N annotated training rows (10%% of them pick the checkpoint)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--alphas", default="0,0.5,0.8,1.0")
    parser.add_argument("--temperatures", default="1,2,4")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    if not (args.run / "annotations" / "manifest.json").is_file():
        sys.exit(f"no annotations in {args.run}: run benchmarks/quality.py --sets sst2 first, or pass --run")
    started = time.perf_counter()
    test = test_rows(args.run / "annotations")
    teacher_acc = float((test["teacher"] == test["gold"]).mean())
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for alpha in map(float, args.alphas.split(",")):
        for temperature in map(float, args.temperatures.split(",")) if alpha > 0 else [None]:
            runs = [train_and_score(args.run, alpha, temperature or 1.0, seed, args, test) for seed in seeds]
            acc, agree = mean_std([r["accuracy"] for r in runs]), mean_std([r["agreement"] for r in runs])
            results.append(
                {
                    "alpha": alpha,
                    "T": "any" if temperature is None else temperature,
                    "accuracy_mean": acc[0],
                    "accuracy_std": acc[1],
                    "agreement_mean": agree[0],
                    "agreement_std": agree[1],
                    "per_seed": runs,
                }
            )
            print(f"  alpha {alpha} T {temperature}: accuracy {acc[0]:.4f} ± {acc[1]:.4f}", flush=True)
    print(f"teacher accuracy on the same {len(test['texts'])} test rows: {teacher_acc:.4f}")
    print_table(results, ["alpha", "T", "accuracy_mean", "accuracy_std", "agreement_mean", "agreement_std"])
    write_result(
        "kd_sweep",
        {
            "command": " ".join(["python benchmarks/kd_sweep.py", *sys.argv[1:]]),
            "run": str(args.run),
            "train_rows": args.train_rows,
            "epochs": args.epochs,
            "seeds": seeds,
            "test_rows": len(test["texts"]),
            "teacher_accuracy": teacher_acc,
            "wall_s": time.perf_counter() - started,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
