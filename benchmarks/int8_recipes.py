"""int8 recipes tried for the export (issue #19): label parity and speed of each, the model alone.

    python benchmarks/int8_recipes.py [--student DIR] [--name int8_recipes]

Every recipe starts from the float32 graph ``distillery export`` builds (eager attention,
onnxruntime's fused BERT graph; serve/variants.py) and is run by onnxruntime on pre-tokenized,
length-sorted batches after a warm-up (median of 3 passes). Parity: same label as the PyTorch
student on the student's own run's test rows ("own") and on the short (SST-2) and long test
rows of benchmarks/real_sets.py's pools (512 each); speed: rows/s at batch 1 (64 rows) and 32
(256 rows) against PyTorch in the same process. Recipes:

- ``int8`` / ``int8-ffn-fp32``: what export offers (dynamic int8, QAttention; FFN outputs float32);
- ``int8 u8 weights``: the same with uint8 (asymmetric) weights instead of int8;
- ``int8 multi-head attention``: the optimizer's MultiHeadAttention fusion (Q/K/V MatMuls quantized apart);
- ``int8 smoothed``: SmoothQuant's scaling (alpha 0.5, from the run's first 256 training rows) put
  before every weight MatMul as a Mul, then int8;
- ``8-bit blocks (32)`` / ``(128)``: onnxruntime's MatMulNBits, 8-bit weights in blocks of 32 or 128
  with int8 compute (``accuracy_level=4``: activations quantized per block of each row), attention
  float32, then ``+ QAttention``.
Results: benchmarks/results/NAME.json, the CPU named.
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from common import ROOT, print_table, write_result
from inference_profile import batches, ort_runner, timed, torch_runner
from onnx import helper, numpy_helper

from distillery.annotate import read_annotations
from distillery.core.models import quiet_third_party
from distillery.serve.variants import build_graph, export_torchscript, quantize
from distillery.student import load_student

POOLS = {"short": ROOT / "data" / "runs" / "bench-real-sst2", "long": ROOT / "data" / "runs" / "bench-real-long"}


def dynamic(inp: Path, out: Path, **extra) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        inp,
        out,
        weight_type=extra.pop("weight_type", QuantType.QInt8),
        per_channel=True,
        op_types_to_quantize=extra.pop("ops", ["MatMul", "Gemm", "Attention"]),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out


def nbits(inp: Path, out: Path, block: int) -> Path:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        onnx.load(str(inp)),
        bits=8,
        block_size=block,
        is_symmetric=True,
        accuracy_level=4,
        op_types_to_quantize=("MatMul",),
    )
    q.process()
    q.model.save_model_to_file(str(out), False)
    return out


def multi_head(student, folder: Path) -> Path:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    eager = copy.deepcopy(student.model).eval()
    eager.set_attn_implementation("eager")
    export_torchscript(eager, student.tokenizer, folder / "raw.onnx", student.temperature)
    options = FusionOptions("bert")
    options.use_multi_head_attention = True
    config = student.model.config
    fused = optimize_model(
        str(folder / "raw.onnx"),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        optimization_options=options,
    )
    fused.save_model_to_file(str(folder / "mha.onnx"))
    return dynamic(folder / "mha.onnx", folder / "mha_int8.onnx")


def smoothed(fp32: Path, out: Path, texts: list[str], tokenizer, alpha: float = 0.5) -> Path:
    """SmoothQuant (Xiao et al. 2023): X W = (X / s)(s W), s_j = max|X_j|^a / max|W_j|^(1-a), as an explicit Mul."""
    import onnxruntime as ort
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(fp32))
    inits = {i.name: i for i in model.graph.initializer}
    targets = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    probe = onnx.load(str(fp32))
    inputs = sorted({n.input[0] for n in targets})
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in inputs)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    largest = {}
    for batch in batches(tokenizer, texts, 32, True):
        mask = batch["attention_mask"].astype(bool)
        for name, value in zip(inputs, session.run(inputs, batch)):
            seen = np.abs(value[mask]).max(0)
            largest[name] = np.maximum(largest.get(name, seen), seen)
    for node in targets:
        weight = numpy_helper.to_array(inits[node.input[1]])
        scale = (
            np.maximum(largest[node.input[0]], 1e-5) ** alpha / np.maximum(np.abs(weight).max(1), 1e-5) ** (1 - alpha)
        ).astype(np.float32)
        inits[node.input[1]].CopyFrom(
            numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), node.input[1])
        )
        model.graph.initializer.append(numpy_helper.from_array(1 / scale, node.name + "_smooth"))
        model.graph.node.append(
            helper.make_node(
                "Mul", [node.input[0], node.name + "_smooth"], [node.name + "_smoothed"], name=node.name + "_mul"
            )
        )
        node.input[0] = node.name + "_smoothed"
    graph = OnnxModel(model)
    graph.topological_sort()
    graph.save_model_to_file(str(fp32.with_name("smoothed.onnx")))
    return dynamic(fp32.with_name("smoothed.onnx"), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--student", type=Path, default=ROOT / "data" / "runs" / "bench-review-sst2-80-20-s0" / "reviewed" / "student"
    )
    parser.add_argument("--name", default="int8_recipes")
    args = parser.parse_args()
    quiet_third_party()
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from onnxruntime.quantization import QuantType

    student = load_student(args.student)
    model = student.model.float().eval()
    config = model.config
    frame, _ = read_annotations(args.student.parent / "annotations")
    sets = {"own": frame.loc[frame["split"] == "test", "text"].tolist()}
    for length, pool in POOLS.items():
        pool_frame, _ = read_annotations(pool / "annotations")
        sets[length] = pool_frame.loc[pool_frame["split"] == "test", "text"].tolist()[:512]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32 = folder / "fp32.onnx"
        build_graph(model, student.tokenizer, fp32, 1.0)
        files = {}
        for variant in ("int8", "int8-ffn-fp32"):
            files[variant] = folder / f"{variant}.onnx"
            quantize(fp32, files[variant], variant, config.intermediate_size, config.hidden_size)
        files["int8 u8 weights"] = dynamic(fp32, folder / "u8.onnx", weight_type=QuantType.QUInt8)
        files["int8 multi-head attention"] = multi_head(student, folder)
        train = frame.loc[frame["split"] == "train", "text"].tolist()[:256]
        files["int8 smoothed"] = smoothed(fp32, folder / "smoothed_int8.onnx", train, student.tokenizer)
        for block in (32, 128):
            files[f"8-bit blocks ({block})"] = nbits(fp32, folder / f"nb{block}.onnx", block)
            files[f"8-bit blocks ({block}) + QAttention"] = dynamic(
                files[f"8-bit blocks ({block})"], folder / f"nb{block}_qa.onnx", ops=["Attention"]
            )
        runs = {
            "PyTorch": torch_runner(model),
            **{name: ort_runner(path, torch.get_num_threads()) for name, path in files.items()},
        }
        results = {name: {"recipe": name} for name in runs}
        for set_name, texts in sets.items():
            prepared = batches(student.tokenizer, texts, 32, True) + batches(
                student.tokenizer, texts[len(texts) // 32 * 32 :], len(texts) % 32 or 32, True
            )
            reference = np.concatenate([runs["PyTorch"](b) for b in prepared]).argmax(1)
            for name, run in runs.items():
                results[name][f"{set_name} same label"] = float(
                    (np.concatenate([run(b) for b in prepared]).argmax(1) == reference).mean()
                )
            if set_name in POOLS:
                b1, b32 = (
                    batches(student.tokenizer, texts[:64], 1, True),
                    batches(student.tokenizer, texts[:256], 32, True),
                )
                for name, run in runs.items():
                    results[name][f"{set_name} b1 rows/s"] = float(
                        np.median([timed(run, b1, 1)["rows_per_s"] for _ in range(3)])
                    )
                    results[name][f"{set_name} b32 rows/s"] = float(
                        np.median([timed(run, b32, 1)["rows_per_s"] for _ in range(3)])
                    )
                for name in runs:
                    results[name][f"{set_name} b1 ÷ PyTorch"] = (
                        results[name][f"{set_name} b1 rows/s"] / results["PyTorch"][f"{set_name} b1 rows/s"]
                    )
                    results[name][f"{set_name} b32 ÷ PyTorch"] = (
                        results[name][f"{set_name} b32 rows/s"] / results["PyTorch"][f"{set_name} b32 rows/s"]
                    )
    rows = list(results.values())
    print_table(
        rows,
        [
            "recipe",
            "own same label",
            "short same label",
            "long same label",
            "short b1 ÷ PyTorch",
            "short b32 ÷ PyTorch",
            "long b1 ÷ PyTorch",
            "long b32 ÷ PyTorch",
        ],
    )
    write_result(
        args.name,
        {
            "command": f"python benchmarks/int8_recipes.py --name {args.name}",
            "student": args.student.parent.parent.name,
            "rows": {k: len(v) for k, v in sets.items()},
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
