"""The ONNX variants ``distillery export`` can ship, and how it picks one.

Every variant comes from one float32 graph. An encoder (BERT, RoBERTa, MiniLM, ...) is exported
with eager attention through the TorchScript exporter, and onnxruntime's transformer optimizer
fuses it: one ``Attention`` op per layer with the mask computed once (``EmbedLayerNormalization``),
``SkipLayerNormalization``, ``BiasGelu``. The graph transformers' SDPA attention gives is not fused,
and most of its int8 time goes to the mask's ``Where`` (docs/results.md, "A student that serves fast"). Other
students (a merged Llama) keep the plain graph of ``torch.onnx`` (dynamo).

- ``int8``: dynamic int8 (onnxruntime ``quantize_dynamic``): weights int8 per output channel,
  activations quantized per batch at run time, in every linear layer and the fused attention.
  The fastest; it moves labels most (the feed-forward layers are the largest source).
- ``int8-ffn-fp32``: the same with each layer's feed-forward output projection (the weights of
  shape intermediate x hidden) left in float32.
- ``fp32``: the float32 graph.

:func:`pick` takes the fastest variant whose labels match the PyTorch student on at least
``min_parity`` of the check rows; ``fp32`` always qualifies (it is the same model).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "VARIANTS",
    "Candidate",
    "build_graph",
    "export_plain",
    "export_torchscript",
    "measure",
    "onnx_student",
    "pick",
    "quantize",
]

VARIANTS = {
    "int8": "int8 weights in every linear layer and the attention (dynamic quantization)",
    "int8-ffn-fp32": "int8 weights except the feed-forward output projections (float32)",
    "fp32": "float32",
}
FUSED_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")  # what the optimizer's BERT fusions know


@dataclass
class Candidate:
    """One variant as measured on the check rows."""

    name: str
    parity: float | None  # share of rows with the PyTorch student's label
    max_prob_change: float | None  # largest change of any class probability
    rows_per_s: float | None  # at the predict batch size
    rows_per_s_batch1: float | None
    size_mb: float

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class _Logits(torch.nn.Module):
    """The classifier with one output, its logits divided by the student's fitted temperature plus its
    class bias (a Llama would also return its KV cache), so a plain onnxruntime softmax gives the
    scaled probabilities."""

    def __init__(self, model, temperature: float = 1.0, bias: list[float] | None = None):
        super().__init__()
        self.model, self.temperature = model, temperature
        self.register_buffer("bias", torch.tensor(bias or [0.0] * model.config.num_labels), persistent=False)

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits / self.temperature + self.bias


def build_graph(
    model, tokenizer, path: Path, temperature: float = 1.0, bias: list[float] | None = None, fused: bool = True
) -> str:
    """Write the float32 graph to ``path``; returns ``fused`` (an encoder, optimized) or ``plain``."""
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    if fused and model.config.model_type in FUSED_TYPES:
        try:
            _export_fused(model, tokenizer, path, temperature, bias)
            return "fused"
        except Exception as e:  # noqa: BLE001 - an architecture the optimizer does not know: the plain graph
            logging.getLogger(__name__).info("fused export failed (%s); the plain graph", e)
    export_plain(model, tokenizer, path, temperature, bias)
    return "plain"


def export_plain(model, tokenizer, path: Path, temperature: float = 1.0, bias: list[float] | None = None) -> None:
    """torch.onnx (the dynamo exporter) with batch and sequence length dynamic."""
    wrapped = _Logits(model, temperature, bias).eval()
    example = tokenizer(["an example sentence to trace", "short"], padding=True, return_tensors="pt")
    inputs = {k: example[k] for k in ("input_ids", "attention_mask")}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's step-by-step lines
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (),
            str(path),
            kwargs=inputs,
            input_names=list(inputs),
            output_names=["logits"],
            dynamic_shapes={k: {0: batch, 1: sequence} for k in inputs},
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def export_torchscript(model, tokenizer, path: Path, temperature: float = 1.0, bias: list[float] | None = None) -> None:
    """The TorchScript exporter (``dynamo=False``), logits out, batch and length dynamic.

    The wrapper is put in eval mode: that exporter puts every module back in its wrapper's mode
    afterwards, and a new module starts in training mode (dropout on: 39% of the time in bernoulli).
    """
    example = tokenizer(["an example sentence to trace", "short"], padding=True, return_tensors="pt")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logits(model, temperature, bias).eval(),
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask")},
            opset_version=17,
            dynamo=False,
        )


def _export_fused(model, tokenizer, path: Path, temperature: float, bias: list[float] | None) -> None:
    """Eager attention, TorchScript export, onnxruntime's BERT optimizer; refused unless every layer's
    attention fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    eager = copy.deepcopy(model).eval()
    eager.set_attn_implementation("eager")
    raw = path.with_name("unfused.onnx")
    export_torchscript(eager, tokenizer, raw, temperature, bias)
    config = model.config
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        fused = optimize_model(
            str(raw), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
        )
    ops = fused.get_fused_operator_statistics()
    if ops.get("Attention", 0) != config.num_hidden_layers:
        raise ValueError(f"{ops.get('Attention', 0)} of {config.num_hidden_layers} attention blocks fused")
    fused.save_model_to_file(str(path))
    raw.unlink()


def quantize(fp32: Path, out: Path, variant: str, intermediate_size: int | None, hidden_size: int | None) -> None:
    """Write ``variant`` (int8 or int8-ffn-fp32) of the float32 graph ``fp32`` to ``out``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" notice
    keep = _ffn_outputs(fp32, intermediate_size, hidden_size) if variant == "int8-ffn-fp32" else []
    quantize_dynamic(
        fp32,
        out,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm", "Attention"],
        nodes_to_exclude=keep,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )  # fused ops have no inferred types


def _ffn_outputs(path: Path, intermediate_size: int | None, hidden_size: int | None) -> list[str]:
    """The MatMuls whose weight is intermediate x hidden: each layer's feed-forward output projection."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    shapes = {init.name: tuple(numpy_helper.to_array(init).shape) for init in graph.initializer if len(init.dims) == 2}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and any(shapes.get(i) == (intermediate_size, hidden_size) for i in node.input)
    ]


def measure(
    student, name: str, path: Path, texts: list[str], reference: np.ndarray | None, batch_size: int
) -> tuple[Candidate, np.ndarray | None]:
    """Parity against ``reference`` (the PyTorch student's probabilities) and speed, on ``texts``;
    returns the candidate and its probabilities."""
    size_mb = path.stat().st_size / 1e6
    if not texts:
        return Candidate(name, None, None, None, None, size_mb), None
    served = onnx_student(student, path)
    served.probabilities(texts[:batch_size], batch_size)  # warm-up
    start = time.perf_counter()
    probs = served.probabilities(texts, batch_size)
    rows_per_s = len(texts) / (time.perf_counter() - start)
    few = texts[:32]
    start = time.perf_counter()
    served.probabilities(few, 1)
    rows_per_s_1 = len(few) / (time.perf_counter() - start)
    parity = float((probs.argmax(1) == reference.argmax(1)).mean())
    return Candidate(name, parity, float(np.abs(probs - reference).max()), rows_per_s, rows_per_s_1, size_mb), probs


def onnx_student(student, path: Path):
    """``student`` served by onnxruntime from the graph at ``path`` (the same code path as predict)."""
    import onnxruntime as ort

    from distillery.student import Student

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Student(path=path.parent, kind="onnx", labels=student.labels, tokenizer=student.tokenizer, session=session)


def pick(candidates: list[Candidate], min_parity: float) -> tuple[Candidate, str]:
    """The fastest candidate with parity >= ``min_parity`` (fp32 when none), and why, in words."""
    passing = [c for c in candidates if c.parity is not None and c.parity >= min_parity and c.rows_per_s]
    if not passing:
        fp32 = next(c for c in candidates if c.name == "fp32")
        return fp32, f"no variant kept the labels on {min_parity:.2%} of the rows; fp32 is the student itself"
    best = max(passing, key=lambda c: c.rows_per_s)
    failed = [c.name for c in candidates if c not in passing]
    why = f"the fastest that keeps the PyTorch student's label on >= {min_parity:.2%} of the rows"
    return best, why + (f" ({', '.join(failed)} did not)" if failed else "")
