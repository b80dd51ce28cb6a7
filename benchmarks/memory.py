"""Peak memory of annotate and distill at 1k and 10k rows: it should not grow with the rows.

    python benchmarks/memory.py [--rows 1000,10000] [--model tiny|embedded]

Each stage runs in its own process (`distillery annotate` / `distillery distill`) on a CSV of
N synthetic reviews; the peak resident set size (ru_maxrss) of that process is read back with
os.wait4. `--model tiny` (default) uses tiny random Llama / RoBERTa models built locally (as in
the tests), so 10k rows run in minutes on a CPU: the model is a constant, what can grow with
the rows is ours (reading rows, chunks, the calibration pass, the dataloaders).
`--model embedded` uses SmolLM2-135M and MiniLM-L6 (10k rows take ~30 min to annotate on 2
cores). Prints a table and writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, print_table, write_result

sys.path.insert(0, str(ROOT / "tests"))
from tiny import build_llama, build_roberta

WORDS = [
    "good",
    "bad",
    "great",
    "awful",
    "fine",
    "boring",
    "fun",
    "slow",
    "smart",
    "dull",
    "lovely",
    "weak",
    "strong",
    "cheap",
    "warm",
    "cold",
]


def write_rows(path: Path, n: int) -> None:
    lines = ["review,sentiment"]
    for i in range(n):
        words = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(5 + i % 20))
        lines.append(f"row {i}: {words},{'positive' if i % 2 else 'negative'}")
    path.write_text("\n".join(lines) + "\n")


def peak_rss(args: list[str]) -> tuple[float, float]:
    """Run ``distillery ARGS`` in a child process; return (peak RSS in MiB, wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillery", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"distillery {' '.join(args)} failed: {proc.stderr.read()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000,10000")
    parser.add_argument("--model", choices=("tiny", "embedded"), default="tiny")
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp())
    teacher, student = (
        ("smollm2", "minilm")
        if args.model == "embedded"
        else (str(build_llama(work / "llama")), str(build_roberta(work / "roberta")))
    )
    results = []
    for n in map(int, args.rows.split(",")):
        data, out = work / f"rows{n}.csv", work / f"run{n}"
        write_rows(data, n)
        common = ["--out", str(out), "--device", "cpu"]
        rss, wall = peak_rss(
            [
                "annotate",
                "--data",
                str(data),
                "--text-column",
                "review",
                "--label-column",
                "sentiment",
                "--teacher",
                teacher,
                "--limit",
                "0",
                "--no-balance",
                *common,
            ]
        )
        results.append({"stage": "annotate", "rows": n, "peak_rss_mib": rss, "wall_s": wall})
        print(f"  annotate {n} rows: {rss:.0f} MiB, {wall:.0f} s", flush=True)
        rss, wall = peak_rss(["distill", "--student-model", student, "--epochs", "1", "--max-length", "64", *common])
        results.append({"stage": "distill", "rows": n, "peak_rss_mib": rss, "wall_s": wall})
        print(f"  distill {n} rows: {rss:.0f} MiB, {wall:.0f} s", flush=True)
    for row in results:
        first = next(r for r in results if r["stage"] == row["stage"])
        row["vs_smallest"] = row["peak_rss_mib"] / first["peak_rss_mib"]
    print_table(results, ["stage", "rows", "peak_rss_mib", "vs_smallest", "wall_s"])
    write_result(
        "memory",
        {
            "command": " ".join(["python benchmarks/memory.py", *sys.argv[1:]]),
            "model": args.model,
            "wall_s": time.perf_counter() - started,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
