"""Where the student's inference time goes (issue #19, step 1): the model alone, tokenization excluded.

    python benchmarks/inference_profile.py [--student DIR] [--rows 256] [--threads 2]

One encoder student, on short rows (SST-2 test sentences) and long rows (the ``long`` set's
~450-character reviews) from the annotated pools of benchmarks/real_sets.py, tokenized once.
Each variant runs the same batches in one process after a warm-up: batch 1 (p50/p95 latency)
and batch 32 (rows/s), batches of similar length (sorted) and, at batch 32, in file order (the
padding a naive server pays). Variants:

- ``torch fp32``: the PyTorch model as ``Student.probabilities`` runs it (no_grad);
- ``torch int8 (dynamic)``: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``;
- ``ort fp32``: the ONNX graph ``distillery export --quantize none`` writes (torch.onnx, dynamo);
- ``ort fp32 legacy``: the same model through the TorchScript exporter (``dynamo=False``);
- ``ort fp32 fused``: the legacy graph after onnxruntime's transformer optimizer
  (``optimize_model(model_type="bert")``: fused attention, SkipLayerNorm, GELU);
- ``ort int8 (export)``: what ``distillery export`` ships today (dynamic int8 MatMul weights,
  attention output projections left in float32);
- ``ort int8 fused``: dynamic int8 on the fused graph (every MatMul);
- ``ort fp32 eager fused``: the student with eager attention, TorchScript-exported and optimized:
  the optimizer fuses it into one ``Attention`` op per layer and ``EmbedLayerNormalization``;
- ``ort int8 eager fused (QAttention)`` / ``(attention fp32)``: dynamic int8 on that graph, the
  fused attention quantized too or left in float32.

Then one operator profile per runtime on long rows at batch 32 (onnxruntime's own profiler for
the int8 export, torch.profiler for fp32): where the time goes, by operator type. Parity: the
share of rows whose label equals the PyTorch fp32 label, and the largest probability change.
Results: benchmarks/results/NAME.json (``--name``, default inference_profile), the CPU named.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from common import ROOT, machine, print_table, write_result

from distillery.annotate import read_annotations
from distillery.serve.variants import export_plain, export_torchscript
from distillery.student import load_student

POOLS = {"short": ROOT / "data" / "runs" / "bench-real-sst2", "long": ROOT / "data" / "runs" / "bench-real-long"}


def batches(tokenizer, texts: list[str], size: int, sort: bool) -> list[dict]:
    """Padded numpy batches of ``size`` texts (by length when ``sort``), tokenized once."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if sort else list(range(len(texts)))
    out = []
    for b in range(0, len(order) - size + 1, size):
        enc = tokenizer(
            [texts[i] for i in order[b : b + size]], padding=True, truncation=True, max_length=512, return_tensors="np"
        )
        out.append(
            {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
        )
    return out


def timed(run, prepared: list[dict], rounds: int) -> dict:
    run(prepared[0])  # warm-up
    lat = []
    for _ in range(rounds):
        for batch in prepared:
            start = time.perf_counter()
            run(batch)
            lat.append(time.perf_counter() - start)
    lat = np.array(lat)
    rows = sum(len(b["input_ids"]) for b in prepared) * rounds
    return {
        "rows_per_s": rows / lat.sum(),
        "p50_ms": 1000 * np.percentile(lat, 50),
        "p95_ms": 1000 * np.percentile(lat, 95),
    }


def torch_runner(model):
    def run(batch):
        with torch.no_grad():
            return model(
                input_ids=torch.from_numpy(batch["input_ids"]), attention_mask=torch.from_numpy(batch["attention_mask"])
            ).logits.numpy()

    return run


def ort_runner(path: Path, threads: int, profile: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_profiling = profile
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch):
        return session.run(["logits"], batch)[0]

    run.session = session
    return run


def _attention_outputs(path: Path) -> list[str]:
    """Names of the weight MatMuls right after each attention (its output projection): what the
    export of issue #11 kept in float32."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {init.name for init in graph.initializer}
    names, after_attention = [], False
    for node in graph.node:
        if "scaled_dot_product_attention" in node.name:
            after_attention = True
        elif after_attention and node.op_type == "MatMul" and any(i in weights for i in node.input):
            names.append(node.name)
            after_attention = False
    return names


def build_variants(student, folder: Path, threads: int) -> dict:
    """Every variant's runner (ONNX files under ``folder``)."""
    import logging
    import warnings

    import onnx

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" notice
    warnings.filterwarnings("ignore")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    model = student.model.float().eval()
    variants = {"torch fp32": torch_runner(model)}
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    variants["torch int8 (dynamic)"] = torch_runner(quantized)
    fp32 = folder / "fp32.onnx"
    export_plain(model, student.tokenizer, fp32, 1.0)
    variants["ort fp32"] = ort_runner(fp32, threads)
    legacy = folder / "legacy.onnx"
    export_torchscript(model, student.tokenizer, legacy)
    assert not any(m.training for m in model.modules()), "the PyTorch student must run in eval mode"
    variants["ort fp32 legacy"] = ort_runner(legacy, threads)
    config = model.config
    fused = optimize_model(
        str(legacy), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    )
    fused_stats = fused.get_fused_operator_statistics()
    fused_path = folder / "fused.onnx"
    fused.save_model_to_file(str(fused_path))
    variants["ort fp32 fused"] = ort_runner(fused_path, threads)
    int8 = folder / "int8.onnx"
    quantize_dynamic(
        fp32,
        int8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_exclude=_attention_outputs(fp32),
    )
    variants["ort int8 (export)"] = ort_runner(int8, threads)
    int8_fused = folder / "int8_fused.onnx"
    quantize_dynamic(
        fused_path,
        int8_fused,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm", "Attention"],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )  # fused ops (com.microsoft) have no inferred types
    variants["ort int8 fused"] = ort_runner(int8_fused, threads)
    # Eager attention (the classic softmax(QK^T + mask) pattern) is what the optimizer fuses into one
    # Attention op, with the mask computed once (EmbedLayerNormalization); SDPA's graph is not fused.
    eager_model = type(model)(
        model.config.__class__.from_dict({**model.config.to_dict(), "_attn_implementation": "eager"})
    )
    eager_model.load_state_dict(model.state_dict())
    for module in eager_model.modules():
        if hasattr(module, "config"):
            module.config._attn_implementation = "eager"
    eager = folder / "eager.onnx"
    export_torchscript(eager_model.eval(), student.tokenizer, eager)
    eager_fused = optimize_model(
        str(eager), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    )
    fused_stats = {
        "sdpa graph": {k: v for k, v in fused_stats.items() if v},
        "eager graph": {k: v for k, v in eager_fused.get_fused_operator_statistics().items() if v},
    }
    eager_path = folder / "eager_fused.onnx"
    eager_fused.save_model_to_file(str(eager_path))
    variants["ort fp32 eager fused"] = ort_runner(eager_path, threads)
    int8_attention = folder / "int8_eager_qattention.onnx"
    quantize_dynamic(
        eager_path,
        int8_attention,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm", "Attention"],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    variants["ort int8 eager fused (QAttention)"] = ort_runner(int8_attention, threads)
    int8_eager = folder / "int8_eager.onnx"
    quantize_dynamic(
        eager_path,
        int8_eager,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    variants["ort int8 eager fused (attention fp32)"] = ort_runner(int8_eager, threads)
    variants["_files"] = {
        "fp32": fp32,
        "int8": int8,
        "fused": fused_path,
        "int8_fused": int8_fused,
        "int8_eager_qattention": int8_attention,
    }
    variants["_fused_stats"] = fused_stats
    return variants


def ort_profile(path: Path, prepared: list[dict], threads: int) -> dict:
    """Share of onnxruntime's node time by operator type (its own profiler)."""
    run = ort_runner(path, threads, profile=True)
    for batch in prepared:
        run(batch)
    trace_file = Path(run.session.end_profiling())  # written in the working folder: read, then removed
    trace = json.loads(trace_file.read_text())
    trace_file.unlink()
    by_op = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and "op_name" in event.get("args", {}):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values())
    return {op: round(t / total, 4) for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:10]}


def torch_profile(model, prepared: list[dict]) -> dict:
    """Share of torch's CPU time by operator (torch.profiler), top 10."""
    from torch.profiler import ProfilerActivity, profile

    run = torch_runner(model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in prepared:
            run(batch)
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in rows)
    return {k: round(t / total, 4) for k, t in sorted(rows, key=lambda kv: -kv[1])[:10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--student", type=Path, default=ROOT / "data" / "runs" / "bench-review-sst2-80-20-s0" / "reviewed" / "student"
    )
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--name", default="inference_profile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    student = load_student(args.student)
    results, profiles = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = build_variants(student, Path(tmp), args.threads)
        files, fused_stats = variants.pop("_files"), variants.pop("_fused_stats")
        for length, pool in POOLS.items():
            frame, _ = read_annotations(pool / "annotations")
            texts = frame.loc[frame["split"] == "test", "text"].tolist()[: args.rows]
            tokens = [len(ids) for ids in student.tokenizer(texts).input_ids]
            sets = {
                (1, True): batches(student.tokenizer, texts[:64], 1, True),
                (32, True): batches(student.tokenizer, texts, 32, True),
                (32, False): batches(student.tokenizer, texts, 32, False),
            }
            reference = np.concatenate([variants["torch fp32"](b) for b in sets[(32, True)]])
            for name, run in variants.items():
                row = {"rows": length, "mean tokens": float(np.mean(tokens)), "variant": name}
                for (size, sort), prepared in sets.items():
                    t = timed(run, prepared, rounds=2 if size == 32 else 1)
                    key = f"b{size}{'' if sort else ' unsorted'}"
                    row[f"{key} rows/s"] = t["rows_per_s"]
                    if size == 1:
                        row["b1 p50 ms"], row["b1 p95 ms"] = t["p50_ms"], t["p95_ms"]
                logits = np.concatenate([run(b) for b in sets[(32, True)]])
                probs = np.exp(logits - logits.max(1, keepdims=True))
                probs /= probs.sum(1, keepdims=True)
                ref = np.exp(reference - reference.max(1, keepdims=True))
                ref /= ref.sum(1, keepdims=True)
                row["same label"] = float((logits.argmax(1) == reference.argmax(1)).mean())
                row["max prob change"] = float(np.abs(probs - ref).max())
                results.append(row)
                print(json.dumps(row), flush=True)
            if length == "long":
                profiles["ort int8 (export), long, b32"] = ort_profile(files["int8"], sets[(32, True)], args.threads)
                profiles["ort int8 fused, long, b32"] = ort_profile(files["int8_fused"], sets[(32, True)], args.threads)
                profiles["ort int8 eager fused (QAttention), long, b32"] = ort_profile(
                    files["int8_eager_qattention"], sets[(32, True)], args.threads
                )
                profiles["torch fp32, long, b32"] = torch_profile(student.model, sets[(32, True)])
    for row in results:
        base = next(r for r in results if r["rows"] == row["rows"] and r["variant"] == "torch fp32")
        row["b1 ÷ torch fp32"] = row["b1 rows/s"] / base["b1 rows/s"]
        row["b32 ÷ torch fp32"] = row["b32 rows/s"] / base["b32 rows/s"]
    print_table(
        results,
        [
            "rows",
            "variant",
            "b1 p50 ms",
            "b1 rows/s",
            "b32 rows/s",
            "b32 unsorted rows/s",
            "b1 ÷ torch fp32",
            "b32 ÷ torch fp32",
            "same label",
            "max prob change",
        ],
    )
    for name, shares in profiles.items():
        print(name, json.dumps(shares))
    print("fused operators:", json.dumps(fused_stats))
    write_result(
        args.name,
        {
            "command": "python benchmarks/inference_profile.py "
            + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "student"),
            "student": args.student.name,
            "threads": args.threads,
            "machine": machine(),
            "fused_operators": fused_stats,
            "results": results,
            "profiles": profiles,
        },
    )


if __name__ == "__main__":
    main()
