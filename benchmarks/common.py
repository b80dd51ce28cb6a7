"""Shared helpers of the benchmark scripts: the real data sets, result files, tables."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from distillery.core.models import quiet_third_party

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"  # real gold-labelled sets, read by path, never copied
RESULTS = ROOT / "benchmarks" / "results"
quiet_third_party()

# name -> (train file, test file, task)
SETS = {
    "sst2": ("sst2_train.csv", "sst2_validation.csv", "sentiment-binary"),
    "tweets": ("tweet_sentiment_train.csv", "tweet_sentiment_test.csv", "sentiment-3way"),
}


def require_data(data_dir: Path, name: str) -> tuple[Path, Path] | None:
    """The train and test files of a set, or None (with a message) when they are absent."""
    train, test = (Path(data_dir) / f for f in SETS[name][:2])
    if not (train.is_file() and test.is_file()):
        print(f"skipping {name}: {train} or {test} not found (pass --data-dir with the folder of the benchmark sets)")
        return None
    return train, test


def build_input(name: str, data_dir: Path, train_rows: int, test_rows: int, seed: int, out: Path) -> Path | None:
    """Write ``out/input.csv``: a seeded sample of the train file (split=train) + test rows (split=test).

    ``test_rows`` 0 keeps the whole test file; otherwise a sample stratified by label.
    """
    files = require_data(data_dir, name)
    if files is None:
        return None
    train = pd.read_csv(files[0], keep_default_na=False).sample(n=train_rows, random_state=seed)
    test = pd.read_csv(files[1], keep_default_na=False)
    if test_rows and test_rows < len(test):
        test = pd.concat(g.sample(frac=test_rows / len(test), random_state=seed) for _, g in test.groupby("label"))
    frame = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    frame = frame[frame["text"].str.strip() != ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "input.csv"
    frame.to_csv(path, index=False)
    return path


def machine() -> dict:
    return {
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **cpu(),
    }


def cpu() -> dict:
    """The CPU's model name and the vector/matrix extensions that decide int8 and bf16 speed (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu": platform.processor() or None}
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
    return {"cpu": model, "cpu_flags": [f for f in wanted if f in flags]}


def batch_seconds(fn, texts: list[str], batch: int) -> list[float]:
    """Seconds of each call ``fn(chunk)`` over ``texts`` in chunks of ``batch`` (a short last one left out)."""
    seconds = []
    for b in range(0, len(texts) - batch + 1, batch):
        start = time.perf_counter()
        fn(texts[b : b + batch])
        seconds.append(time.perf_counter() - start)
    return seconds


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def read_results(names: str) -> list[dict]:
    """The saved results files ``benchmarks/results/NAME.json`` of comma-separated ``names`` (for a --merge)."""
    return [json.loads((RESULTS / f"{name}.json").read_text()) for name in names.split(",")]


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print dicts as an aligned text table (floats with 4 significant decimals)."""

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
