"""Inference: students vs the teacher, rows/s and latency p50/p95 at batch 1 and 32, size on disk (issue #11).

    python benchmarks/student_vs_teacher.py [--run data/runs/bench-quality-sst2] [--rows 128]

(Named benchmarks/inference.py until issue #19, which gave that name to the serving benchmark.)

Times the students a run has trained (student-minilm, student-smollm2-lora, or student) and
its local teacher (SmolLM2-135M scoring every label in one forward pass, with and without the
shared-prefix cache) on the same test texts, sorted by length so batches hold similar lengths,
in one process, after a warm-up. Latency is per batch (at batch 1, per row). Speed-ups are
against the teacher with the prefix cache (the fastest teacher). Size on disk: the teacher as
shipped (a Q4_1 GGUF; it runs as float32), the student directories as saved (the LoRA student
is an adapter: it needs the base model too). An encoder student is also exported as
`distillery export` does it (ONNX float32 and int8 weights, run by onnxruntime) and timed the
same way; "same label" compares each variant with the PyTorch student on every test row of
the run. Prints a table and writes benchmarks/results/student_vs_teacher.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, batch_seconds, print_table, write_result

from distillery.annotate import AnnotateConfig, read_annotations
from distillery.annotate.backends import build_teacher
from distillery.core.models import resolve_model
from distillery.core.tasks import TaskSpec
from distillery.serve import ExportConfig, export
from distillery.student import load_student, size_on_disk

RUNS = [ROOT / "data" / "runs" / "bench-quality-sst2", ROOT / "data" / "runs" / "demo"]


def time_batches(fn, texts: list[str], batch: int, rounds: int) -> dict:
    """rows/s over ``rounds`` passes and per-batch latency percentiles, after one warm-up batch."""
    fn(texts[:batch])
    lat = np.array([seconds for _ in range(rounds) for seconds in batch_seconds(fn, texts, batch)])
    return {
        "batch": batch,
        "rows_per_s": batch * len(lat) / lat.sum(),
        "p50_ms": 1000 * np.percentile(lat, 50),
        "p95_ms": 1000 * np.percentile(lat, 95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="run dir with annotations and students (default: the SST-2 quality run, else the demo run)",
    )
    parser.add_argument("--rows", type=int, default=128, help="test texts timed (batch 32 needs at least 32)")
    args = parser.parse_args()
    run = args.run or next((p for p in RUNS if (p / "annotations" / "manifest.json").is_file()), None)
    if run is None:
        sys.exit(
            f"no run found: expected one of {[str(p) for p in RUNS]}; run benchmarks/quality.py or "
            "'distillery run' first, or pass --run"
        )
    started = time.perf_counter()
    frame, manifest = read_annotations(run / "annotations")
    texts = sorted(
        frame.loc[frame["split"] == "test", "text"].tolist()[: args.rows], key=len
    )  # batches of similar length, for every model
    results = []

    cfg = AnnotateConfig.from_flat({**manifest["config"], "device": "cpu"}, strict=False)
    teacher = build_teacher(cfg, TaskSpec(**manifest["task"]))
    teacher_size = size_on_disk(resolve_model(manifest["teacher"]))
    for batch in (1, 32):
        row = {
            "model": f"teacher {manifest['teacher']}",
            "size_mb": teacher_size / 1e6,
            **time_batches(teacher.score, texts, batch, rounds=1),
        }
        results.append(row)
        print(f"  {row['model']} batch {batch}: {row['rows_per_s']:.1f} rows/s", flush=True)
    teacher.scorer.set_prefix([])  # the same teacher computing the whole prompt for every row
    for batch in (1, 32):
        row = {
            "model": f"teacher {manifest['teacher']}, no prefix cache",
            "size_mb": teacher_size / 1e6,
            **time_batches(teacher.score, texts, batch, rounds=1),
        }
        results.append(row)
        print(f"  {row['model']} batch {batch}: {row['rows_per_s']:.1f} rows/s", flush=True)
    del teacher

    all_test = frame.loc[frame["split"] == "test", "text"].tolist()
    students = sorted(
        p for p in run.glob("student*") if (p / "distillery_student.json").is_file() and not p.name.endswith("-onnx")
    )
    exports = Path(tempfile.mkdtemp(prefix="inference-onnx-"))
    for path in students:
        variants = [(path.name, load_student(path, "cpu"))]
        if variants[0][1].kind == "encoder":  # the product's export: ONNX float32 and int8 (onnxruntime, per-channel)
            for variant in ("fp32", "int8"):
                onnx_dir = export(
                    ExportConfig(student=str(path), onnx_dir=str(exports / f"{path.name}-{variant}"), variant=variant)
                )
                variants.append((f"{path.name} ONNX {variant}", load_student(onnx_dir)))
        reference = variants[0][1].probabilities(all_test, 32)
        for name, student in variants:
            probs = student.probabilities(all_test, 32)
            same = float((probs.argmax(1) == reference.argmax(1)).mean())
            size = size_on_disk(student.path) / 1e6
            for batch in (1, 32):
                row = {
                    "model": name,
                    "size_mb": size,
                    "same_label_as_fp32": same,
                    "max_prob_diff": float(abs(probs - reference).max()),
                    **time_batches(lambda t, b=batch, st=student: st.probabilities(t, b), texts, batch, rounds=2),
                }
                results.append(row)
                print(
                    f"  {row['model']} batch {batch}: {row['rows_per_s']:.1f} rows/s, same label as fp32 on "
                    f"{same:.4f} of {len(all_test)} rows",
                    flush=True,
                )
    for row in results:
        base = next(r for r in results if r["batch"] == row["batch"])
        row["speedup_vs_teacher"] = row["rows_per_s"] / base["rows_per_s"]
    print_table(
        results,
        ["model", "batch", "rows_per_s", "p50_ms", "p95_ms", "speedup_vs_teacher", "same_label_as_fp32", "size_mb"],
    )
    write_result(
        "student_vs_teacher",
        {
            "command": " ".join(["python benchmarks/student_vs_teacher.py", *sys.argv[1:]]),
            "run": str(run.resolve().relative_to(ROOT)),
            "rows": len(texts),
            "parity_rows": len(all_test),
            "wall_s": time.perf_counter() - started,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
