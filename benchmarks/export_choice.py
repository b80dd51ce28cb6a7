"""What ``distillery export`` picks on real runs (issue #19): every variant's label parity and speed.

    python benchmarks/export_choice.py [--runs RUN,RUN,...] [--name export_choice]

Runs ``export`` (``--variant auto``, every default) on the students of benchmark runs built from
the shared gold sets (benchmarks/class_balance.py and benchmarks/review.py make them: 500
training rows, imbalanced, 2-4 labels) and collects what it recorded: each variant's share of
the run's test rows with the PyTorch student's label, its largest probability change, rows/s at
batch 32 and 1 against the PyTorch student's, and the variant picked.
Results: benchmarks/results/NAME.json, the CPU named.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

from common import ROOT, print_table, write_result

from distillery.core.models import quiet_third_party
from distillery.serve import ExportConfig, export

RUNS = [
    "bench-review-sst2-80-20-s0/reviewed",
    "bench-review-sst2-80-20-s1/reviewed",
    "bench-balance-long-75-25-n500-s0-auto",
    "bench-balance-tweets2-75-25-n500-s0-auto",
    "bench-balance-tweets3-as-shipped-n500-s0-auto",
    "bench-balance-agnews-55-25-15-5-n500-s0-auto",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(RUNS), help="run folders under data/runs, each with a student/")
    parser.add_argument("--name", default="export_choice")
    args = parser.parse_args()
    quiet_third_party()
    started, results = time.perf_counter(), []
    for run in args.runs.split(","):
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            out = export(
                ExportConfig(student=str(ROOT / "data" / "runs" / run / "student"), onnx_dir=str(Path(tmp) / "onnx"))
            )
            meta = json.loads((out / "distillery_student.json").read_text())
        record, torch_speed = meta["export"], meta["export"]["pytorch_rows_per_s"]
        row = {
            "run": run,
            "labels": len(meta["labels"]),
            "rows": record["rows"],
            "picked": record["variant"],
            "PyTorch rows/s": torch_speed,
        }
        for c in record["candidates"]:
            row[f"{c['name']} parity"] = c["parity"]
            row[f"{c['name']} max change"] = c["max_prob_change"]
            row[f"{c['name']} ÷ PyTorch"] = c["rows_per_s"] / torch_speed
            row[f"{c['name']} b1 rows/s"] = c["rows_per_s_batch1"]
        results.append(row)
        print(json.dumps(row), flush=True)
    print_table(
        results,
        [
            "run",
            "labels",
            "rows",
            "int8 parity",
            "int8-ffn-fp32 parity",
            "picked",
            "int8 ÷ PyTorch",
            "int8-ffn-fp32 ÷ PyTorch",
            "fp32 ÷ PyTorch",
        ],
    )
    write_result(
        args.name,
        {
            "command": f"python benchmarks/export_choice.py --name {args.name}",
            "wall_s": time.perf_counter() - started,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
