"""The schema of ``distillery_student.json``: what a saved student says about itself.

distill writes it (kind, labels, base), export copies it for the ONNX model (weights, parameters,
where it came from), evaluate adds the evaluation and the answer-or-defer threshold; predict, the
model card and ``load_student`` read it. One dataclass, so the three writers agree.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from distillery.core.rundir import write_json

__all__ = ["STUDENT_FILE", "STUDENT_NAMES", "StudentMeta"]

STUDENT_FILE = "distillery_student.json"
# What distill and export write at the top of a student folder (the student kinds' save_pretrained files,
# the ONNX model and ours): a file of someone else's by one of these names stops them before they start.
STUDENT_NAMES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "adapter_config.json",
    "adapter_model.safetensors",
    "model.onnx",
    "model.onnx.data",
    "README.md",
    "merged",
    STUDENT_FILE,
    "distillery_config.yaml",
    "train_log.jsonl",
    "train_summary.json",
)


@dataclass
class StudentMeta:
    """A saved student's own record.

    Args:
        student: its kind: a registered student kind (encoder, llama-lora, ...), ``merged`` (a
            LoRA student folded into its base) or ``onnx``.
        labels: the label set, in the model's output order.
        base: a LoRA adapter's base model (a path or hub id); None for a full model.
        qlora: the adapter was trained on a 4-bit base.
        weights: an ONNX export's weights, ``int8`` or ``float32``.
        parameters: parameter count (an ONNX export keeps its source's).
        temperature: the student's logits are divided by it before the softmax (temperature
            scaling fitted on its validation rows by distill; 1.0 = none; an ONNX export has it
            built into its logits and records 1.0, with the fitted value in ``scaled_by``).
        scaled_by: an ONNX export's built-in temperature.
        class_bias: added to each class's scaled logit before the softmax (fitted with the
            temperature by distill, against the teacher's distribution; None = none; an ONNX
            export has it built in and records None, with the fitted values in ``shifted_by``).
        shifted_by: an ONNX export's built-in class bias.
        exported_from: an ONNX export's source folder, relative to the export.
        evaluation: evaluate's metrics for this student.
        defer: the answer-or-defer threshold evaluate picked (predict --defer reads it); an ONNX
            export's is recomputed for the variant it serves.
        export: an ONNX export's variant, the variants measured (parity, speed) and why it was picked.
        plugin: the package whose plugin registered its kind (left out for Distillery's own kinds):
            loading it where that package is missing names it.
        extra: keys this version does not know, kept as read.
    """

    student: str
    labels: list[str]
    base: str | None = None
    qlora: bool = False
    weights: str | None = None
    parameters: int | None = None
    temperature: float = 1.0
    scaled_by: float | None = None
    class_bias: list[float] | None = None
    shifted_by: list[float] | None = None
    exported_from: str | None = None
    evaluation: dict | None = None
    defer: dict | None = None
    export: dict | None = None
    plugin: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | Path) -> StudentMeta | None:
        """The record in ``folder``, or None where there is none."""
        path = Path(folder) / STUDENT_FILE
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in values.items() if k in known}, extra={k: v for k, v in values.items() if k not in known}
        )

    def write(self, folder: str | Path) -> None:
        """Write it (atomically) into ``folder``; fields left None are left out."""
        values = {
            k: v for k, v in dataclasses.asdict(self).items() if k != "extra" and (v is not None or k in ("defer",))
        }
        write_json(Path(folder) / STUDENT_FILE, {**values, **self.extra})

    def as_dict(self) -> dict:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}, **self.extra}
