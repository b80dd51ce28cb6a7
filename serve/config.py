"""Typed configs of the serving commands: predict and export."""

from __future__ import annotations

from dataclasses import dataclass

from distillery.core.options import check_finite, option
from distillery.core.errors import UserError


@dataclass
class PredictConfig:
    """Label new rows with a saved student (encoder, LoRA adapter, merged or ONNX)."""

    student: str = option("data/runs/demo/student", "a student directory written by distill (or export)")
    data: str = option("", "input (required): a .csv/.tsv/.jsonl/.json/.parquet file, 'tweets' (built in), or hf:NAME")
    hf_config: str = option("", "config name of an hf: dataset")
    split: str = option("train", "split of an hf: dataset")
    text_column: str = option("text", "column that holds the text")
    id_column: str = option("", "column with row ids, kept in the output (default: the row's position in the input, from 0)")
    drop_empty: bool = option(False, "skip rows with empty text instead of stopping with an error")
    out: str = option("predictions.csv", "output CSV: id, text, label, one p_LABEL column per label, confidence (and deferred); "
                                        "a directory gets DIR/predictions.csv")
    batch_size: int = option(32, "rows per forward pass (rows of similar length are batched together)")
    chunk_size: int = option(1000, "rows read, predicted and written at a time (the unit of resume; memory is flat in the row count)")
    defer: bool = option(False, "add a 'deferred' column: True where the confidence is under the threshold that evaluate "
                                "picked for --target-agreement (send those rows to the teacher: annotate --only-deferred)")
    defer_threshold: float = option(-1.0, "confidence under which a row is deferred (default: the one evaluate recorded for the student)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N (an ONNX student runs on the CPU)")
    overwrite: bool = option(False, "predict again from the start: replace an --out that another run, or a changed input, wrote")

    def __post_init__(self) -> None:
        check_finite(self)
        if not self.data:
            raise UserError("data: expected an input (--data FILE, 'tweets' or hf:NAME); found none")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise UserError(f"batch_size, chunk_size: expected >= 1, found {self.batch_size}, {self.chunk_size}")
        if self.defer_threshold != -1.0 and not 0.0 <= self.defer_threshold <= 1.0:
            raise UserError(f"defer_threshold: expected a confidence in [0, 1], found {self.defer_threshold}")


@dataclass
class ExportConfig:
    """Export a saved student to ONNX, optionally with int8 weights (onnxruntime dynamic quantization)."""

    student: str = option("data/runs/demo/student", "a student directory written by distill (a LoRA student: its merged/ folder, see --merge)")
    output_dir: str = option("", "where the ONNX student goes (default: STUDENT-onnx beside the student)")
    quantize: str = option("int8", "int8 (weights of the linear layers in int8, onnxruntime dynamic quantization) or none (float32)",
                           choices=("int8", "none"))
    overwrite: bool = option(False, "write into an --output-dir that holds files distillery did not write")

    def __post_init__(self) -> None:
        check_finite(self)
        if self.quantize not in ("int8", "none"):
            raise UserError(f"quantize: expected int8 or none, found '{self.quantize}'")
