"""One loader for every saved student: encoder, LoRA adapter, merged LoRA, or exported ONNX.

from distillery.student import load_student
student = load_student("data/runs/demo/student")          # or .../student-onnx
probs = student.probabilities(["great film", "awful"])    # (n, n_labels), rows sum to 1
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from distillery.core.errors import UserError
from distillery.core.lock import LOCK_FILE
from distillery.core.models import max_length_of, parameter_count, predict_probabilities, size_on_disk
from distillery.core.rundir import owned
from distillery.core.studentmeta import STUDENT_FILE, StudentMeta
from distillery.student.kinds import load_trained_student

__all__ = [
    "Student",
    "load_student",
    "predict_probabilities",
    "size_on_disk",
]  # predict_probabilities: from distillery.core.models

ONNX_FILE = "model.onnx"


@dataclass
class Student:
    """A saved student, ready to label text.

    ``kind``: encoder, llama-lora (adapter on its base), merged (LoRA folded in) or onnx.
    ``model`` is the PyTorch module (None for ONNX), ``session`` the onnxruntime session.
    """

    path: Path
    kind: str
    labels: list[str]
    tokenizer: object
    model: object = None
    session: object = None
    evaluated_base: str = ""  # what the weights run as, for the report and the model card
    parameters: int | None = None
    meta: dict = field(default_factory=dict)  # its distillery_student.json (labels, kind, evaluation, defer)
    temperature: float = 1.0  # its fitted temperature scaling (an ONNX export has it in its graph)
    class_bias: list[float] | None = None  # and its class bias, fitted with it (distill/scaling.py)

    @functools.cached_property
    def window(self) -> int:
        """The tokens the student reads of a row (its tokenizer's limit, within its position embeddings)."""
        config = getattr(self.model, "config", None)
        if config is None and (Path(self.path) / "config.json").is_file():
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(self.path)
        return max_length_of(self.tokenizer, config)

    def embeddings(self, texts: list[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, mean-pooled last hidden layer)``; PyTorch students only (ONNX gives logits)."""
        if self.session is not None:
            raise UserError(
                f"{self.path}: an ONNX student gives no embeddings; pass the PyTorch student it was exported from"
            )
        return predict_probabilities(
            self.model,
            self.tokenizer,
            texts,
            batch_size,
            embeddings=True,
            temperature=self.temperature,
            bias=self.class_bias,
        )

    def predict(self, texts: list[str], batch_size: int = 32) -> list[str]:
        """The most likely label of each text."""
        return [self.labels[i] for i in self.probabilities(texts, batch_size).argmax(axis=1)]

    def probabilities(self, texts: list[str], batch_size: int = 32, max_length: int | None = None) -> np.ndarray:
        """``(len(texts), len(labels))`` class probabilities, rows in input order."""
        if self.session is None:
            return predict_probabilities(
                self.model,
                self.tokenizer,
                texts,
                batch_size,
                max_length,
                temperature=self.temperature,
                bias=self.class_bias,
            )
        max_length = max_length or self.window
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        names = {i.name for i in self.session.get_inputs()}
        for b in range(0, len(texts), batch_size):
            idx = order[b : b + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="np"
            )
            logits = self.session.run(None, {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0]
            probs[idx] = softmax(
                logits.astype(np.float32), axis=-1
            )  # numpy: a torch op here wakes torch's threads, which then compete with onnxruntime's
        return probs


def load_student(path: str | Path, device: str | torch.device = "cpu") -> Student:
    """Load any saved student directory (see :class:`Student`); a clear error for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"student not found: '{path}'; pass the directory distill or export wrote (e.g. data/runs/demo/student)"
        )
    meta_file = path / STUDENT_FILE
    if owned(path) and not meta_file.is_file():  # distill and export remove it when they start and write it last
        if _last_writer(path) == "export":
            raise UserError(f"{path}: the export did not finish (no {STUDENT_FILE}); rerun 'distillery export'")
        raise UserError(
            f"{path}: the student's training did not finish (no {STUDENT_FILE}); rerun 'distillery distill' "
            "(with --resume if it saved checkpoints)"
        )
    record = StudentMeta.read(path)
    meta = record.as_dict() if record is not None else {}
    if (path / ONNX_FILE).is_file():  # onnxruntime on the CPU, whatever the device
        return _load_onnx(path, meta)
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{path}: expected a saved student (config.json, adapter_config.json or {ONNX_FILE}); found none"
        )
    tokenizer, model = load_trained_student(path, device)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    kind = meta.get("student", "encoder")  # encoder, llama-lora or merged (save_student writes it)
    return Student(
        path=path,
        kind=kind,
        labels=labels,
        tokenizer=tokenizer,
        model=model,
        evaluated_base=model.evaluated_base,
        parameters=parameter_count(model)[1],
        meta=meta,
        temperature=float(meta.get("temperature", 1.0)),
        class_bias=meta.get("class_bias"),
    )


def _last_writer(path: Path) -> str | None:
    """The command that last held the folder's lock (the lock file names it), if any."""
    try:
        return json.loads((path / LOCK_FILE).read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def _load_onnx(path: Path, meta: dict) -> Student:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("an ONNX student needs onnxruntime: pip install 'distillery[export]'") from None
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    return Student(
        path=path,
        kind="onnx",
        labels=meta["labels"],
        tokenizer=AutoTokenizer.from_pretrained(path),
        session=session,
        evaluated_base=f"ONNX ({meta.get('weights', 'float32')} weights, onnxruntime)",
        parameters=meta.get("parameters"),
        meta=meta,
    )
