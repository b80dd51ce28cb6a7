"""Does KD on more unlabelled rows denoise the teacher? The encoder student vs training rows on SST-2.

    python benchmarks/data_size.py [--sizes 500,1000,2000,5000] [--seeds 0,1,2]

Needs the SST-2 annotations of benchmarks/real_sets.py (5,000 annotated training rows, the 872
validation rows as test). For each size and seed, that many training rows are drawn from the
pool, calibrated with the default (``auto``: gold rows present, so a bias and temperature are
fitted on 200 of them) and a MiniLM student is distilled with distill's defaults, then scored
on the 872 validation rows: accuracy, retention (student / teacher accuracy) and agreement.
Target (issue #9): retention >= 1.0 with 5,000-10,000 rows. Writes benchmarks/results/data_size.json.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import print_table, write_result
from small_data import run_one, summarise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,1000,2000,5000")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    started = time.perf_counter()
    table = []
    for size in map(int, args.sizes.split(",")):
        runs = [run_one("sst2", int(seed), "encoder", {}, size) for seed in args.seeds.split(",")]
        table += [{"train_rows": size, **row} for row in summarise(runs)]
    print_table(
        table,
        ["train_rows", "seeds", "accuracy", "accuracy_std", "agreement", "teacher_accuracy", "retention", "distill_s"],
    )
    write_result(
        "data_size",
        {
            "command": " ".join(["python benchmarks/data_size.py", *sys.argv[1:]]),
            "wall_s": time.perf_counter() - started,
            "results": table,
        },
    )


if __name__ == "__main__":
    main()
