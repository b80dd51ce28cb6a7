"""Serving speed (issue #19): the int8 export against its float32 PyTorch student, short and long rows.

    python benchmarks/inference.py [--student DIR] [--rows 256] [--rounds 3] [--name inference]

One encoder student, in one process, on the same rows: short (SST-2 test sentences, ~25 tokens)
and long (the ``long`` set's ~110-token reviews), from the annotated pools of
benchmarks/real_sets.py (``python benchmarks/real_sets.py --sets sst2,long`` builds them). Each
path labels raw text (tokenization included):

- ``HF pipeline``: ``transformers.pipeline("text-classification")`` on the PyTorch student,
  every class's score (``top_k=None``), rows in the order given;
- ``PyTorch``: ``Student.probabilities``, our path (rows sorted by length into batches);
- ``ONNX fp32`` / ``ONNX int8-ffn-fp32`` / ``ONNX int8``: the variants ``distillery export``
  measures (onnxruntime's fused graph; serve/variants.py), run by ``Student.probabilities``;
- ``ONNX fp32, unfused``: the plain torch.onnx graph that export shipped before issue #19.

Batch 1: p50/p95 latency per row and rows/s over the first 64 rows. Batch 32, two ways: a file
(all ``--rows`` rows in one call, as ``distillery predict`` passes a chunk: our paths sort them by
length into batches of 32, the pipeline keeps their order) and requests (calls of 32 rows in
file order, as a server batches what arrives: each batch padded to its longest row). Rounds are interleaved (every path
once per round, ``--rounds`` rounds) and the
median round is kept, so a slow spell of this shared machine hits every path alike. Label parity
(same label as PyTorch, largest probability change) on every test row of the set, up to 1,000.
Results: benchmarks/results/NAME.json, with the CPU's model and its vector/matrix extensions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, batch_seconds, print_table, write_result

from distillery.annotate import read_annotations
from distillery.core.models import quiet_third_party
from distillery.serve.variants import build_graph, onnx_student, quantize
from distillery.student import load_student

POOLS = {"short": ROOT / "data" / "runs" / "bench-real-sst2", "long": ROOT / "data" / "runs" / "bench-real-long"}
STUDENT = ROOT / "data" / "runs" / "bench-review-sst2-80-20-s0" / "reviewed" / "student"


def paths(student, folder: Path) -> dict:
    """Every path as ``fn(texts, batch_size) -> probabilities`` (the pipeline returns its own dicts)."""
    from transformers import pipeline

    model = student.model.float().eval()
    classify = pipeline("text-classification", model=model, tokenizer=student.tokenizer, device="cpu", top_k=None)
    out = {
        "HF pipeline": lambda texts, b: classify(texts, batch_size=b, truncation=True),
        "PyTorch": student.probabilities,
    }
    graphs = {}
    graphs["fp32, unfused"] = folder / "plain" / "model.onnx"
    graphs["fp32, unfused"].parent.mkdir()
    build_graph(model, student.tokenizer, graphs["fp32, unfused"], student.temperature, fused=False)
    graphs["fp32"] = folder / "fp32" / "model.onnx"
    graphs["fp32"].parent.mkdir()
    assert build_graph(model, student.tokenizer, graphs["fp32"], student.temperature) == "fused"
    for variant in ("int8-ffn-fp32", "int8"):
        graphs[variant] = folder / variant / "model.onnx"
        graphs[variant].parent.mkdir()
        quantize(graphs["fp32"], graphs[variant], variant, model.config.intermediate_size, model.config.hidden_size)
    for name in ("fp32, unfused", "fp32", "int8-ffn-fp32", "int8"):
        out[f"ONNX {name}"] = onnx_student(student, graphs[name]).probabilities
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--student",
        type=Path,
        default=STUDENT,
        help="an encoder student folder (default: the SST-2 80/20 review-arm MiniLM)",
    )
    parser.add_argument("--rows", type=int, default=256, help="rows timed at batch 32 (batch 1: the first 64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="inference")
    args = parser.parse_args()
    quiet_third_party()
    started = time.perf_counter()
    student = load_student(args.student)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = paths(student, Path(tmp))
        for length, pool in POOLS.items():
            frame, _ = read_annotations(pool / "annotations")
            test = frame.loc[frame["split"] == "test", "text"].tolist()
            texts, parity_texts = test[: args.rows], test[:1000]
            tokens = [len(ids) for ids in student.tokenizer(texts).input_ids]
            reference = student.probabilities(parity_texts)
            rounds = {name: {"b1": [], "b32": [], "b32 requests": []} for name in runs}
            for fn in runs.values():  # warm-up
                fn(texts[:32], 32)
            for _ in range(args.rounds):
                for name, fn in runs.items():
                    time.sleep(
                        0.5
                    )  # the last path's idle threads (torch's OpenMP, onnxruntime's pool) stop spinning first
                    rounds[name]["b1"].append(batch_seconds(lambda t, f=fn: f(t, 1), texts[:64], 1))
                    time.sleep(0.5)
                    start = time.perf_counter()
                    fn(texts, 32)
                    rounds[name]["b32"].append(time.perf_counter() - start)
                    time.sleep(0.5)
                    rounds[name]["b32 requests"].append(batch_seconds(lambda t, f=fn: f(t, 32), texts, 32))
            for name, fn in runs.items():
                b1 = sorted(rounds[name]["b1"], key=sum)[len(rounds[name]["b1"]) // 2]  # the median round
                b32 = float(np.median(rounds[name]["b32"]))
                requests = sorted(rounds[name]["b32 requests"], key=sum)[len(rounds[name]["b32 requests"]) // 2]
                row = {
                    "rows": length,
                    "mean tokens": float(np.mean(tokens)),
                    "path": name,
                    "b1 p50 ms": 1000 * float(np.percentile(b1, 50)),
                    "b1 p95 ms": 1000 * float(np.percentile(b1, 95)),
                    "b1 rows/s": len(b1) / sum(b1),
                    "b32 rows/s": len(texts) / b32,
                    "b32 requests rows/s": 32 * len(requests) / sum(requests),
                    "b32 requests p50 ms": 1000 * float(np.percentile(requests, 50)),
                    "b1 rounds rows/s": [len(r) / sum(r) for r in rounds[name]["b1"]],
                    "b32 rounds rows/s": [len(texts) / t for t in rounds[name]["b32"]],
                    "b32 requests rounds rows/s": [32 * len(r) / sum(r) for r in rounds[name]["b32 requests"]],
                }
                if name != "HF pipeline":
                    probs = fn(parity_texts, 32)
                    row["same label"] = float((probs.argmax(1) == reference.argmax(1)).mean())
                    row["max prob change"] = float(np.abs(probs - reference).max())
                    row["parity rows"] = len(parity_texts)
                results.append(row)
                print(
                    f"  {length} {name}: b1 {row['b1 rows/s']:.1f} rows/s (p50 {row['b1 p50 ms']:.1f} ms), "
                    f"b32 {row['b32 rows/s']:.1f} rows/s "
                    f"(requests {row['b32 requests rows/s']:.1f})",
                    flush=True,
                )
    for row in results:
        base = next(r for r in results if r["rows"] == row["rows"] and r["path"] == "PyTorch")
        row["b1 ÷ PyTorch"] = row["b1 rows/s"] / base["b1 rows/s"]
        row["b32 ÷ PyTorch"] = row["b32 rows/s"] / base["b32 rows/s"]
        row["b32 requests ÷ PyTorch"] = row["b32 requests rows/s"] / base["b32 requests rows/s"]
    print_table(
        results,
        [
            "rows",
            "path",
            "b1 p50 ms",
            "b1 p95 ms",
            "b1 rows/s",
            "b32 rows/s",
            "b32 requests rows/s",
            "b1 ÷ PyTorch",
            "b32 ÷ PyTorch",
            "b32 requests ÷ PyTorch",
            "same label",
            "max prob change",
        ],
    )
    write_result(
        args.name,
        {
            "command": f"python benchmarks/inference.py --rows {args.rows} --rounds {args.rounds} --name {args.name}",
            "student": str(args.student.resolve().relative_to(ROOT))
            if args.student.resolve().is_relative_to(ROOT)
            else args.student.name,
            "threads": torch.get_num_threads(),
            "wall_s": time.perf_counter() - started,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
