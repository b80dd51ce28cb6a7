"""Students on a user's few hundred rows: 500-row training samples, 3 seeds, distill's defaults.

    python benchmarks/small_data.py [--sets "sst2,tweets2,long 75/25"] [--seeds 0,1,2] [--lora-seeds 0]
    python benchmarks/small_data.py --sets "long 75/25" --set min_steps=0 --set lr=1e-4   # one variant

Needs the annotations of benchmarks/real_sets.py. For each set and seed, 500 training rows are
drawn (SST-2: from the 5,000-row pool, natural 56/44 shares; binary tweets: from the 1,500-row
pool; ``long 75/25``: from its 600 training rows), the run is calibrated by the real annotate
code path with the default ``--calibrate auto`` (these rows have gold labels, so auto fits on
gold rows), and students are distilled with distill's defaults (overrides: ``--set KEY=VALUE``)
and scored on the set's test rows against gold: accuracy, agreement with the teacher, the
teacher's accuracy on the same rows and the majority-class baseline. Prints mean ± std over
seeds and the targets (encoder ≥ 0.97 × teacher, LoRA ≥ 0.95 × teacher) and writes
benchmarks/results/small_data.json (or ``--name``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import numpy as np
import pandas as pd
from common import ROOT, print_table, write_result
from kd_sweep import mean_std
from real_sets import load, materialize

from distillery.annotate import read_annotations
from distillery.core.annotations import label_columns
from distillery.distill import DistillConfig, distill, load_trained_student
from distillery.evaluation import predict_student

POOLS = {"sst2": "sst2", "tweets2": "tweets2", "long 75/25": "long"}


def sample(name: str, n_train: int, seed: int) -> pd.DataFrame:
    """``n_train`` training rows drawn with ``seed`` plus every test row of the set."""
    frame = load(POOLS[name])
    train = frame[frame["split"] == "train"].sample(n=n_train, random_state=seed)
    out = pd.concat([train, frame[frame["split"] == "test"]], ignore_index=True)
    out.attrs["labels"] = frame.attrs["labels"]
    return out


def score(student_dir, test: pd.DataFrame, labels: list[str], teacher_pred: np.ndarray) -> dict:
    tokenizer, model = load_trained_student(student_dir, "cpu")
    pred = predict_student(model, tokenizer, test["text"].tolist(), 32).argmax(1)
    gold = test["gold"].map(labels.index).to_numpy()
    return {"accuracy": float((pred == gold).mean()), "agreement": float((pred == teacher_pred).mean())}


def run_one(name: str, seed: int, student: str, overrides: dict, n_train: int) -> dict:
    rows = sample(name, n_train, seed)
    run = materialize(rows, POOLS[name], ROOT / "data" / "runs" / "bench-small", "auto")
    frame, manifest = read_annotations(run / "annotations")
    labels = manifest["labels"]
    test = frame[frame["split"] == "test"]
    gold = test["gold"].map(labels.index).to_numpy()
    teacher_pred = test[label_columns(labels)].to_numpy().argmax(1)
    train_gold = frame.loc[frame["split"] == "train", "gold"]
    started = time.perf_counter()
    out = distill(DistillConfig(out=str(run), student=student, seed=seed, **overrides))
    seconds = time.perf_counter() - started
    result = {
        "set": name,
        "student": student,
        "seed": seed,
        **score(out, test, labels, teacher_pred),
        "distill_s": seconds,
        "teacher_accuracy": float((teacher_pred == gold).mean()),
        "calibration": manifest["calibration"]["mode"],
        "majority_accuracy": float((test["gold"] == train_gold.value_counts().idxmax()).mean()),
    }
    shutil.rmtree(out)
    print(
        f"  {name} {student} seed {seed}: student {result['accuracy']:.4f}, teacher {result['teacher_accuracy']:.4f}, "
        f"majority {result['majority_accuracy']:.4f}, {seconds:.0f} s",
        flush=True,
    )
    return result


def summarise(runs: list[dict]) -> list[dict]:
    table = []
    for key in dict.fromkeys((r["set"], r["student"]) for r in runs):
        group = [r for r in runs if (r["set"], r["student"]) == key]
        acc, agree = mean_std([r["accuracy"] for r in group]), mean_std([r["agreement"] for r in group])
        teacher = float(np.mean([r["teacher_accuracy"] for r in group]))
        table.append(
            {
                "set": key[0],
                "student": key[1],
                "seeds": len(group),
                "accuracy": acc[0],
                "accuracy_std": acc[1],
                "agreement": agree[0],
                "teacher_accuracy": teacher,
                "retention": acc[0] / teacher,
                "majority_accuracy": group[0]["majority_accuracy"],
                "distill_s": float(np.mean([r["distill_s"] for r in group])),
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(POOLS))
    parser.add_argument("--seeds", default="0,1,2", help="encoder student seeds")
    parser.add_argument(
        "--lora-seeds", default="0", help="LoRA student seeds ('' = none; ~10 min a run on 2 CPU cores)"
    )
    parser.add_argument("--train-rows", type=int, default=500)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a DistillConfig default (repeatable)"
    )
    parser.add_argument("--name", default="small_data")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        kind = type(getattr(DistillConfig(), key))
        overrides[key] = kind(value) if kind is not bool else value.lower() in ("1", "true", "yes")
    started = time.perf_counter()
    runs = []
    for name in args.sets.split(","):
        runs += [run_one(name, int(s), "encoder", overrides, args.train_rows) for s in args.seeds.split(",") if s]
        runs += [
            run_one(name, int(s), "llama-lora", overrides, args.train_rows) for s in args.lora_seeds.split(",") if s
        ]
    table = summarise(runs)
    print_table(
        table,
        [
            "set",
            "student",
            "seeds",
            "accuracy",
            "accuracy_std",
            "agreement",
            "teacher_accuracy",
            "retention",
            "majority_accuracy",
            "distill_s",
        ],
    )
    for row in table:
        target = 0.97 if row["student"] == "encoder" else 0.95
        verdict = (
            "met" if row["retention"] >= target and row["accuracy"] > row["majority_accuracy"] + 0.02 else "MISSED"
        )
        print(
            f"  {row['set']} {row['student']}: retention {row['retention']:.3f} (target >= {target}), "
            f"{row['accuracy'] - row['majority_accuracy']:+.3f} over majority: {verdict}"
        )
    write_result(
        args.name,
        {
            "command": " ".join(["python benchmarks/small_data.py", *sys.argv[1:]]),
            "overrides": overrides,
            "train_rows": args.train_rows,
            "wall_s": time.perf_counter() - started,
            "results": table,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
