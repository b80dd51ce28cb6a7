"""Typed configs of the serving commands: predict and export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distillery.core.errors import UserError
from distillery.core.options import check_settings, check_student_folder, option
from distillery.core.run import shared


@dataclass
class PredictConfig:
    """Label new rows with a saved student (encoder, LoRA adapter, merged or ONNX)."""

    out: str = shared("out")
    student: str = shared("student")
    data: str = shared("data")
    hf_config: str = shared("hf_config")
    split: str = shared("split")
    text_column: str = shared("text_column")
    id_column: str = shared("id_column")
    drop_empty: bool = shared("drop_empty")
    predictions: str = option(
        "predictions.csv",
        "output CSV: id, text, label, one p_LABEL column per label, confidence (and deferred); "
        "a directory gets DIR/predictions.csv",
        form="path",
        short="output CSV",
        group="output",
        metavar="FILE",
    )
    predict_batch_size: int = option(
        32,
        "rows per forward pass (rows of similar length are batched together)",
        ge=1,
        short="rows per forward pass",
        group="output",
    )
    chunk_size: int = option(
        1000,
        "rows read, predicted and written at a time (the unit of resume; memory is flat in the row count)",
        ge=1,
        short="rows per chunk (the unit of resume)",
        group="output",
    )
    defer: bool = option(
        False,
        "add a 'deferred' column: True where the confidence is under the threshold that evaluate "
        "picked for --target-agreement (send those rows to the teacher: annotate --only-deferred)",
        short="mark rows under evaluate's threshold",
        group="student",
    )
    defer_threshold: float = option(
        -1.0,
        "confidence under which a row is deferred (default: the one evaluate recorded for the student)",
        ge=-1.0,
        le=1.0,
        short="confidence under which rows defer",
        group="student",
    )
    device: str = shared("device")
    restart_predictions: bool = option(
        False,
        "predict again from the start: replace a --predictions file that another predict run, or a changed "
        "input, wrote (a file distillery did not write is never replaced)",
        short="predict again from the start",
        group="output",
    )

    def __post_init__(self) -> None:
        check_settings(self)  # every field against its declared range, form and choices
        if not self.data:
            raise UserError("data: expected an input (--data FILE, 'tweets' or hf:NAME); found none")
        if Path(self.out).suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet"):
            raise UserError(
                "out: expected the run folder (--out is a run folder in every command); found the file name "
                f"'{self.out}'; "
                "write the predictions with --predictions FILE.csv"
            )
        if self.defer_threshold != -1.0 and not self.defer:
            raise UserError(
                "defer_threshold: it sets the threshold of --defer; pass --defer too, or leave --defer-threshold out"
            )
        check_student_folder(self.student, "--student")
        if self.defer_threshold != -1.0 and not 0.0 <= self.defer_threshold <= 1.0:
            raise UserError(f"defer_threshold: expected a confidence in [0, 1], found {self.defer_threshold}")


@dataclass
class ExportConfig:
    """Export a saved student to ONNX for onnxruntime: the fastest variant (int8, int8-ffn-fp32, fp32)
    that keeps the student's labels on its run's held-out rows."""

    out: str = shared("out")
    student: str = shared("student")
    onnx_dir: str = option(
        "",
        "where the ONNX student goes (default: STUDENT-onnx beside the student)",
        form="path",
        short="ONNX folder (STUDENT-onnx)",
        group="output",
        metavar="DIR",
    )
    variant: str = option(
        "auto",
        "auto: the fastest variant whose labels match the PyTorch student on at least --min-parity of the "
        "check rows; or force one: int8 (every linear layer and the attention in int8), int8-ffn-fp32 "
        "(the feed-forward output projections in float32), fp32",
        choices=("auto", "int8", "int8-ffn-fp32", "fp32"),
        short="auto, int8, int8-ffn-fp32, fp32",
        group="output",
    )
    min_parity: float = option(
        0.99,
        "share of the check rows on which a variant must give the PyTorch student's label (--variant auto)",
        gt=0.0,
        le=1.0,
        short="share of rows that must keep the label",
        group="output",
    )
    annotations: str = shared("annotations")
    check_rows: int = option(
        2000,
        "at most this many rows are checked (and the answer-or-defer threshold recomputed on them)",
        ge=1,
        short="rows the variants are checked on",
        group="output",
    )
    predict_batch_size: int = option(
        32,
        "rows per forward pass when the variants are timed (predict's default)",
        ge=1,
        short="rows per forward pass",
        group="output",
    )
    overwrite: bool = shared("overwrite")

    def __post_init__(self) -> None:
        check_settings(self)  # every field against its declared range, form and choices
        check_student_folder(self.student, "--student")
