"""The export command: a saved student -> ONNX that onnxruntime serves, in the fastest variant that keeps its labels.

Run it with::

    distillery export --out data/runs/demo                    # -> data/runs/demo/student-onnx (variant picked)
    distillery export --student data/runs/demo/student --variant int8
    distillery export --student data/runs/demo/student_lora/merged --variant fp32

The directory holds ``model.onnx`` (inputs ``input_ids``, ``attention_mask``; output ``logits``),
the tokenizer files, ``distillery_student.json`` (labels, weights, the variants measured and
the one picked) and the model card. It loads in ``distillery predict`` and in a plain
onnxruntime session (README, "Serving without Distillery"). The variants and the rule are in
:mod:`distillery.serve.variants`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from distillery.core.errors import UserError
from distillery.core.options import student_folder
from distillery.core.registry import student_kinds
from distillery.core.rundir import claim_folder, locked
from distillery.core.studentmeta import StudentMeta
from distillery.distill.students import student_kind
from distillery.serve.config import ExportConfig
from distillery.serve.defer import pick_threshold
from distillery.serve.student import ONNX_FILE, load_student
from distillery.serve.variants import VARIANTS, build_graph, measure, onnx_student, pick, quantize

__all__ = ["export", "check_rows"]

# Rows of many lengths (so batches are padded) to check the fused graph when the run's rows are not here.
SAMPLE_TEXTS = [" ".join(["a fine and thoughtful film"] * k) + ("!" if k % 2 else "") for k in range(1, 13)]


def export(cfg: ExportConfig) -> Path:
    """Export ``cfg.student`` to ONNX; returns the directory written."""
    folder = student_folder(cfg)
    student = load_student(folder, "cpu")
    if student.kind in student_kinds and not student_kind(student.kind).exportable:
        raise UserError(f"{folder}: a LoRA adapter exports as a merged model; train with --merge and pass --student {folder}/merged")
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        raise ImportError("export needs onnx, onnxscript and onnxruntime: pip install 'distillery[export]'") from None
    rows = check_rows(cfg, folder, student.labels)
    out = Path(cfg.onnx_dir or f"{folder.resolve()}-onnx")
    with locked(out, "export"):
        claim_folder(out, cfg.overwrite, flag="--onnx-dir")
        return _export(cfg, student, out, rows)


def check_rows(cfg: ExportConfig, folder: Path, labels: list[str]) -> dict | None:
    """The rows the variants are checked on: the run's test rows (else all its rows), at most
    ``cfg.check_rows``, with the teacher's labels (for the answer-or-defer threshold). None when
    the student's run has no annotations here."""
    from distillery.annotate.chunks import label_columns, read_annotations

    annotations = Path(cfg.annotations) if cfg.annotations else _trained_on(folder)
    if annotations is None or not (annotations / "manifest.json").is_file():
        if cfg.annotations:
            raise UserError(f"annotations: expected the run's annotations folder (with manifest.json); found none in '{cfg.annotations}'")
        return None
    frame, manifest = read_annotations(annotations)
    if manifest["labels"] != labels:
        raise UserError(f"{annotations}: expected annotations for the student's labels {labels}; found {manifest['labels']}; "
                        "pass the run's own --annotations")
    frame = frame[frame["error_type"] == ""]
    held_out = frame[frame["split"] == "test"]
    rows = (held_out if len(held_out) else frame).head(cfg.check_rows)
    label_id = {lab: i for i, lab in enumerate(labels)}
    scores = rows[label_columns(labels)].to_numpy(float)
    teacher = np.where(np.isnan(scores).any(1), rows["teacher_label"].map(label_id).to_numpy(), np.nan_to_num(scores, nan=-np.inf).argmax(1))
    return {"texts": rows["text"].tolist(), "teacher": teacher.astype(int), "split": "test" if len(held_out) else "all",
            "annotations": annotations}


def _trained_on(folder: Path) -> Path | None:
    """The annotations folder the student's distill read (its distillery_config.yaml; a merged
    LoRA student's is one folder up; an ONNX export's: the student it came from)."""
    for path in (folder, folder.parent):
        config = path / "distillery_config.yaml"
        if config.is_file():
            cfg = yaml.safe_load(config.read_text()) or {}
            return Path(cfg.get("annotations") or Path(cfg.get("out", "")) / "annotations")
    return None


def _export(cfg: ExportConfig, student, out: Path, rows: dict | None) -> Path:
    started = time.perf_counter()
    model = student.model.float().eval()
    texts = rows["texts"] if rows else []
    reference, pytorch_speed = _reference(student, texts, cfg.predict_batch_size)
    names = [cfg.variant] if cfg.variant != "auto" else list(VARIANTS) if texts else ["fp32"]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32" / ONNX_FILE
        fp32.parent.mkdir()
        graph = build_graph(model, student.tokenizer, fp32, student.temperature)
        if graph == "fused" and not _same_model(student, fp32, texts[:64] or SAMPLE_TEXTS, cfg.predict_batch_size):
            graph = build_graph(model, student.tokenizer, fp32, student.temperature, fused=False)
        files, candidates = {}, []
        for name in names:
            files[name] = fp32 if name == "fp32" else Path(tmp) / name / ONNX_FILE
            if name != "fp32":
                files[name].parent.mkdir()
                quantize(fp32, files[name], name, getattr(model.config, "intermediate_size", None), getattr(model.config, "hidden_size", None))
            candidate, probs = measure(student, name, files[name], texts, reference, cfg.predict_batch_size)
            candidates.append((candidate, probs))
        if cfg.variant == "auto" and texts:
            chosen, why = pick([c for c, _ in candidates], cfg.min_parity)
        else:
            chosen = candidates[0][0]
            why = (f"forced with --variant {cfg.variant}" if cfg.variant != "auto"
                   else "no rows of the student's run to check an int8 variant on (pass --annotations); fp32 is the student itself")
        probs = dict((c.name, p) for c, p in candidates)[chosen.name]
        out.mkdir(parents=True, exist_ok=True)
        for path in files[chosen.name].parent.iterdir():  # model.onnx and its external weights, if any
            shutil.move(str(path), out / path.name)
    student.tokenizer.save_pretrained(out)
    record = {"variant": chosen.name, "graph": graph, "why": why, "min_parity": cfg.min_parity, "batch_size": cfg.predict_batch_size,
              "rows": len(texts), "rows_from": rows["split"] if rows else None, "pytorch_rows_per_s": pytorch_speed,
              "candidates": [c.as_dict() for c, _ in candidates]}
    source = StudentMeta.read(student.path) or StudentMeta(student=student.kind, labels=student.labels)
    # Relative to the export, so the folder can be shared without this machine's paths.
    meta = dataclasses.replace(source, student="onnx", labels=student.labels, parameters=student.parameters,
                               temperature=1.0, scaled_by=student.temperature,  # in the graph: logits / T
                               exported_from=os.path.relpath(student.path.resolve(), out.resolve()),
                               weights="float32" if chosen.name == "fp32" else "int8", export=record,
                               defer=_defer(source.defer, probs, rows))
    meta.write(out)
    _report(candidates, chosen, why, rows, cfg, pytorch_speed)
    print(f"export: {student.kind} student -> {out / ONNX_FILE} ({chosen.name}: {VARIANTS[chosen.name]}; {time.perf_counter() - started:.0f} s)")
    return out


def _reference(student, texts: list[str], batch_size: int) -> tuple[np.ndarray | None, float | None]:
    """The PyTorch student's probabilities on ``texts`` and its rows/s (after a warm-up batch)."""
    if not texts:
        return None, None
    student.probabilities(texts[:batch_size], batch_size)
    start = time.perf_counter()
    probs = student.probabilities(texts, batch_size)
    return probs, len(texts) / (time.perf_counter() - start)


def _same_model(student, fp32: Path, texts: list[str], batch_size: int) -> bool:
    """Whether the fused float32 graph gives the PyTorch student's probabilities (to 1e-3) on ``texts``."""
    got = onnx_student(student, fp32).probabilities(texts, batch_size)
    return bool(np.abs(got - student.probabilities(texts, batch_size)).max() <= 1e-3)


def _defer(source: dict | None, probs: np.ndarray | None, rows: dict | None) -> dict | None:
    """The answer-or-defer threshold for the variant served: evaluate's target, the variant's own
    confidences and agreement with the teacher on the check rows. Kept as evaluate recorded it
    when there are no rows (an fp32 export: the same model)."""
    if not source or probs is None or rows is None:
        return source
    agree = probs.argmax(1) == rows["teacher"]
    picked = pick_threshold(probs.max(1), agree, source["target"])
    return {**picked, "target": source["target"], "recomputed_on": len(agree)} if picked else None


def _report(candidates: list, chosen, why: str, rows: dict | None, cfg: ExportConfig, pytorch_speed: float | None) -> None:
    """One line per variant measured, then the choice."""
    if rows:
        print(f"export: {len(rows['texts'])} {'test rows' if rows['split'] == 'test' else 'rows (no test split)'} of {rows['annotations']}, "
              f"labels against the PyTorch student ({pytorch_speed:,.0f} rows/s), speed at batch {cfg.predict_batch_size}:")
    for c, _ in candidates:
        if c.parity is not None:
            print(f"  {c.name:<14} same label {c.parity:.4f}  largest probability change {c.max_prob_change:.3f}  "
                  f"{c.rows_per_s:,.0f} rows/s ({c.rows_per_s / pytorch_speed:.1f}x PyTorch; {c.rows_per_s_batch1:,.0f} at batch 1)  {c.size_mb:.1f} MB"
                  + ("" if c.parity >= cfg.min_parity else f"  < {cfg.min_parity}"))
    print(f"export: {chosen.name}: {why}")
