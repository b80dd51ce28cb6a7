"""Print the benchmark results in benchmarks/results/*.json as Markdown tables (for the README).

python benchmarks/report.py
"""

from __future__ import annotations

import json

from common import RESULTS

TABLES = {  # result file -> columns shown
    "annotation_speed": [
        "method",
        "prompt",
        "batch",
        "rows_per_s",
        "s_per_row",
        "speedup_vs_baseline",
        "same_label_as_baseline",
    ],
    "training_speed": ["method", "examples_per_s", "vs_trainer_max_length", "vs_trainer_dynamic", "vs_trainer_grouped"],
    "inference": [
        "model",
        "batch",
        "rows_per_s",
        "p50_ms",
        "p95_ms",
        "speedup_vs_teacher",
        "size_mb",
        "same_label_as_fp32",
    ],
    "memory": ["stage", "rows", "peak_rss_mib", "vs_smallest", "wall_s"],
    "quality": [
        "set",
        "model",
        "accuracy",
        "macro_f1",
        "ece",
        "agreement",
        "kappa",
        "retention",
        "train_rows",
        "test_rows",
    ],
    "kd_sweep": ["alpha", "T", "accuracy_mean", "accuracy_std", "agreement_mean", "agreement_std"],
    "teacher_calibration": [
        "mode",
        "teacher_accuracy",
        "teacher_macro_f1",
        "teacher_ece",
        "student_accuracy_mean",
        "student_accuracy_std",
    ],
    "calibration_shift": [
        "scenario",
        "mode",
        "accuracy",
        "accuracy_std",
        "macro_f1",
        "ece",
        "majority_share",
        "majority_baseline",
    ],
    "small_data_encoder": [
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
    "small_data_lora": [
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
    "data_size": [
        "train_rows",
        "seeds",
        "accuracy",
        "accuracy_std",
        "agreement",
        "teacher_accuracy",
        "retention",
        "distill_s",
    ],
    "active": ["strategy", "calls", "accuracy", "std", "runs", "round_s"],
    "gpu_throughput-cpu": [
        "teacher",
        "weights",
        "rows_cap",
        "tokens_cap",
        "default",
        "batches",
        "rows_per_s",
        "share_of_peak",
        "peak_gib",
    ],
    "gpu_throughput-cuda": [
        "teacher",
        "weights",
        "rows_cap",
        "tokens_cap",
        "default",
        "batches",
        "rows_per_s",
        "tflops",
        "share_of_peak",
        "peak_gib",
    ],
}


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return "" if value is None else str(value)


def main() -> None:
    for name, columns in TABLES.items():
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            print(f"<!-- {name}: no results yet -->\n")
            continue
        data = json.loads(path.read_text())
        print(f"#### {name}\n\n`{data.get('command', '')}` ({data.get('wall_s', 0) / 60:.1f} min)\n")
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for row in data["results"]:
            print("| " + " | ".join(cell(row.get(c)) for c in columns) + " |")
        extra = {k: v for k, v in data.items() if k not in ("results", "command", "wall_s", "machine")}
        if extra:
            print("\n" + ", ".join(f"{k}: {cell(v)}" for k, v in extra.items() if not isinstance(v, (dict, list))))
        if isinstance(data.get("summary"), dict):
            print(", ".join(f"{k}: {cell(v)}" for k, v in data["summary"].items()))
        print()


if __name__ == "__main__":
    main()
