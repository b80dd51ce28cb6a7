"""The export command: a saved student -> ONNX (float32 or int8 weights) that onnxruntime serves.

Run it with::

    distillery export --student data/runs/demo/student                  # -> data/runs/demo/student-onnx (int8)
    distillery export --student data/runs/demo/student_lora/merged --quantize none

The directory holds ``model.onnx`` (inputs ``input_ids``, ``attention_mask``; output ``logits``),
the tokenizer files, ``distillery_student.json`` (labels, weights) and the model card. It loads
in ``distillery predict`` and in a plain onnxruntime session (README, "Serving without Distillery").
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from distillery.core.registry import student_kinds
from distillery.core.studentmeta import StudentMeta
from distillery.distill.students import student_kind
from distillery.serve.config import ExportConfig
from distillery.serve.student import ONNX_FILE, load_student
from distillery.core.errors import UserError
from distillery.core.options import student_folder
from distillery.core.rundir import claim_folder, locked

__all__ = ["export"]


def export(cfg: ExportConfig) -> Path:
    """Export ``cfg.student`` to ONNX; returns the directory written."""
    folder = student_folder(cfg)
    student = load_student(folder, "cpu")
    if student.kind in student_kinds and not student_kind(student.kind).exportable:
        raise UserError(f"{folder}: a LoRA adapter exports as a merged model; train with --merge and pass --student {folder}/merged")
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ImportError("export needs onnx, onnxscript and onnxruntime: pip install 'distillery[export]'") from None
    out = Path(cfg.onnx_dir or f"{folder.resolve()}-onnx")
    with locked(out, "export"):
        claim_folder(out, cfg.overwrite, flag="--onnx-dir")
        return _export(cfg, student, out, quantize_dynamic, QuantType)


def _export(cfg: ExportConfig, student, out: Path, quantize_dynamic, QuantType) -> Path:
    folder = student.path
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / ONNX_FILE
        _export_fp32(student.model.float().eval(), student.tokenizer, fp32, student.temperature)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.quantize == "int8":
            logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" notice
            # Dynamic quantization: int8 weights with one scale per output channel, activations
            # quantized per batch at run time (no calibration data). The embeddings and each
            # attention block's output projection stay float32: on the SST-2 student, quantizing
            # everything kept the fp32 label on 98.4% of the rows, this on 99.3% (README, "Export").
            quantize_dynamic(fp32, out / ONNX_FILE, weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=_attention_outputs(fp32))
        else:
            for path in Path(tmp).iterdir():  # model.onnx and its external weights, if any
                shutil.move(str(path), out / path.name)
    student.tokenizer.save_pretrained(out)
    source = StudentMeta.read(folder) or StudentMeta(student=student.kind, labels=student.labels)
    # Relative to the export, so the folder can be shared without this machine's paths.
    meta = dataclasses.replace(source, student="onnx", labels=student.labels, parameters=student.parameters,
                               temperature=1.0, scaled_by=student.temperature,  # in the graph: logits / T
                               exported_from=os.path.relpath(folder.resolve(), out.resolve()),
                               weights="int8" if cfg.quantize == "int8" else "float32")
    meta.write(out)
    print(f"export: {student.kind} student -> {out / ONNX_FILE} ({meta.weights} weights, {time.perf_counter() - started:.0f} s)")
    return out


class _Logits(torch.nn.Module):
    """The classifier with one output, its logits divided by the student's fitted temperature (a Llama
    would also return its KV cache), so a plain onnxruntime softmax gives the calibrated probabilities."""

    def __init__(self, model, temperature: float = 1.0):
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits / self.temperature


def _export_fp32(model, tokenizer, path: Path, temperature: float = 1.0) -> None:
    """torch.onnx (the dynamo exporter) with batch and sequence length dynamic."""
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    model = _Logits(model, temperature)
    example = tokenizer(["an example sentence to trace", "short"], padding=True, return_tensors="pt")
    inputs = {k: example[k] for k in ("input_ids", "attention_mask")}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's step-by-step lines
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(path), kwargs=inputs, input_names=list(inputs), output_names=["logits"],
                          dynamic_shapes={k: {0: batch, 1: sequence} for k in inputs}, dynamo=True, external_data=False, verbose=False)


def _attention_outputs(path: Path) -> list[str]:
    """Names of the weight MatMuls right after each attention (its output projection)."""
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
