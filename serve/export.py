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
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from distillery.core.errors import UserError
from distillery.core.lock import locked
from distillery.core.registry import student_kinds
from distillery.core.run import Run
from distillery.core.rundir import (
    check_folder,
    claim_folder,
    guard_files,
    install,
    make_folder,
    mark_made,
    remove_leftovers,
    remove_owned,
    temporary_name,
)
from distillery.core.studentmeta import STUDENT_FILE, STUDENT_NAMES, StudentMeta
from distillery.serve.config import ExportConfig
from distillery.serve.variants import VARIANTS, build_graph, measure, onnx_student, pick, quantize
from distillery.student import ONNX_FILE, load_student, pick_threshold, student_kind, write_card

__all__ = ["export", "check_rows"]

MIN_ROWS = 200  # check rows at least, where the run has them (see check_rows)
# Rows of many lengths (so batches are padded) to check the fused graph when the run's rows are not here.
SAMPLE_TEXTS = [" ".join(["a fine and thoughtful film"] * k) + ("!" if k % 2 else "") for k in range(1, 13)]


def export(cfg: ExportConfig) -> Path:
    """Export ``cfg.student`` to ONNX; returns the directory written."""
    folder = Run.of(cfg).student
    student = load_student(folder, "cpu")
    if student.kind == "onnx":
        source = student.meta.get("exported_from")
        raise UserError(
            f"{folder}: expected a PyTorch student; found an ONNX export"
            + (f" of {(folder / source).resolve()}" if source else "")
            + "; pass --student with the folder distill wrote"
        )
    if student.kind in student_kinds and not student_kind(student.kind).exportable:
        raise UserError(
            f"{folder}: a LoRA adapter exports as a merged model; train with --merge and pass --student {folder}/merged"
        )
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        raise ImportError("export needs onnx, onnxscript and onnxruntime: pip install 'distillery[export]'") from None
    out = Path(cfg.onnx_dir) if cfg.onnx_dir else Run.of(cfg).onnx
    _check_target(out, folder)
    check_folder(out, cfg.overwrite, flag="--onnx-dir")  # before the lock: a refused folder gets nothing written
    rows = check_rows(cfg, folder, student.labels)
    with locked(out, "export", flag="--onnx-dir"):
        claim_folder(out, cfg.overwrite, flag="--onnx-dir")
        guard_files(out, list(STUDENT_NAMES), flag="--onnx-dir")  # a file of someone else's is never replaced
        # The record goes last and the card after it: a killed export leaves no record, and
        # load_student refuses a claimed folder without one (the model may be half-written).
        for name in (STUDENT_FILE, "README.md"):
            remove_owned(out / name)
        remove_leftovers(out)  # a killed export's work folders
        with tempfile.TemporaryDirectory(dir=out, prefix=".export-", suffix=temporary_name("")) as tmp:
            mark_made(tmp)  # a killed export's work folder is Distillery's to clear, by its record
            tempfile.tempdir, default = (
                tmp,
                tempfile.tempdir,
            )  # onnxruntime's optimizer writes its own work files there too
            try:
                _export(cfg, student, out, rows, Path(tmp))
            finally:
                tempfile.tempdir = default
        write_card(out)
        return out


def _check_target(out: Path, folder: Path) -> None:
    """Refuse an --onnx-dir that is a file, the student's folder (or inside or around it), or another stage's folder."""
    if out.exists() and not out.is_dir():
        raise UserError(
            f"onnx_dir: expected a folder for the ONNX student; found the file '{out}'; pass a folder with --onnx-dir"
        )
    target, source = out.resolve(), folder.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise UserError(
            f"onnx_dir: '{out}' is the student's folder, inside it or around it; the export would mix with "
            "the PyTorch student; "
            "pass another --onnx-dir (default: STUDENT-onnx beside it)"
        )
    record = StudentMeta.read(out)
    if (
        (record is not None and record.student != "onnx")
        or Run(out).manifest.is_file()  # an annotations folder
        or Run(out).annotations.is_dir()  # a run folder
    ):
        raise UserError(f"onnx_dir: '{out}' holds a student or a run of distillery's own; pass another --onnx-dir")


def check_rows(cfg: ExportConfig, folder: Path, labels: list[str]) -> dict | None:
    """The rows the variants are checked on: the run's test rows, at most ``cfg.check_rows``, topped
    up with training rows to MIN_ROWS; the teacher's labels of the test rows (for the answer-or-defer
    threshold). None when the student's run has no annotations here."""
    from distillery.core.annotations import read_annotations, teacher_probabilities

    annotations = Path(cfg.annotations) if cfg.annotations else _trained_on(folder)
    if annotations is None or not Run(Path(), annotations_dir=str(annotations)).manifest.is_file():
        if cfg.annotations:
            raise UserError(
                "annotations: expected the run's annotations folder (with manifest.json); found none in "
                f"'{cfg.annotations}'"
            )
        return None
    frame, manifest = read_annotations(annotations)
    if manifest["labels"] != labels:
        raise UserError(
            f"{annotations}: expected annotations for the student's labels {labels}; found {manifest['labels']}; "
            "pass the run's own --annotations"
        )
    frame = frame[frame["error_type"] == ""]
    held_out = frame[frame["split"] == "test"].head(cfg.check_rows)
    # Parity needs no labels, and 0.99 cannot be told on a few dozen rows (one changed label is
    # more than 1%): a small test split is topped up with training rows, up to MIN_ROWS.
    others = frame[frame["split"] != "test"].head(max(0, min(MIN_ROWS, cfg.check_rows) - len(held_out)))
    teacher = teacher_probabilities(held_out, labels).argmax(1)
    split = "test" if len(others) == 0 else "test and training" if len(held_out) else "training"
    return {
        "texts": held_out["text"].tolist() + others["text"].tolist(),
        "teacher": teacher,
        "split": split,
        "annotations": annotations,
    }


def _trained_on(folder: Path) -> Path | None:
    """The annotations folder the student's distill read (its distillery_config.yaml; a merged
    LoRA student's is one folder up; an ONNX export's: the student it came from)."""
    for path in (folder, folder.parent):
        config = path / "distillery_config.yaml"
        if config.is_file():
            cfg = yaml.safe_load(config.read_text()) or {}
            named = Run(Path(cfg.get("out", "")), cfg.get("annotations") or "")
            if named.annotations.is_absolute() or named.manifest.is_file():
                return named.annotations
            return Run(
                path.parent
            ).annotations  # a relative path from where distill ran: the run folder holds the student
    return None


def _looked_for(folder: Path) -> str:
    """Where export looked for the student's run, in words."""
    found = _trained_on(folder)
    return f"found none in {found}" if found else f"{folder} has no distillery_config.yaml"


def _export(cfg: ExportConfig, student, out: Path, rows: dict | None, tmp: Path) -> None:
    started = time.perf_counter()
    model = student.model.float().eval()
    texts = rows["texts"] if rows else []
    reference, pytorch_speed = _reference(student, texts, cfg.predict_batch_size)
    names = [cfg.variant] if cfg.variant != "auto" else list(VARIANTS) if texts else ["fp32"]
    fp32 = tmp / "fp32" / ONNX_FILE
    fp32.parent.mkdir()
    graph = build_graph(model, student.tokenizer, fp32, student.temperature, student.class_bias)
    if graph == "fused" and not _same_model(
        student, fp32, texts[:64] or SAMPLE_TEXTS, reference, cfg.predict_batch_size
    ):
        graph = build_graph(model, student.tokenizer, fp32, student.temperature, student.class_bias, fused=False)
    files, candidates = {}, []
    for name in names:
        files[name] = fp32 if name == "fp32" else tmp / name / ONNX_FILE
        if name != "fp32":
            files[name].parent.mkdir()
            quantize(
                fp32,
                files[name],
                name,
                getattr(model.config, "intermediate_size", None),
                getattr(model.config, "hidden_size", None),
            )
        candidate, probs = measure(student, name, files[name], texts, reference, cfg.predict_batch_size)
        candidates.append((candidate, probs))
    if cfg.variant == "auto" and texts:
        chosen, why = pick([c for c, _ in candidates], cfg.min_parity)
    else:
        chosen = candidates[0][0]
        why = (
            f"forced with --variant {cfg.variant}"
            if cfg.variant != "auto"
            else f"no rows of the student's run to check an int8 variant on ({_looked_for(student.path)}; "
            "pass --annotations); "
            "fp32 is the student itself"
        )
    probs = dict((c.name, p) for c, p in candidates)[chosen.name]
    final = make_folder(tmp / "final")  # the files served, moved beside the user's files at once
    for path in files[chosen.name].parent.iterdir():  # model.onnx and its external weights, if any
        os.replace(path, final / path.name)
    student.tokenizer.model_max_length = student.window  # an ONNX folder has no model config: the tokenizer says it
    student.tokenizer.save_pretrained(final)
    install(final, out)
    record = {
        "variant": chosen.name,
        "graph": graph,
        "why": why,
        "min_parity": cfg.min_parity,
        "batch_size": cfg.predict_batch_size,
        "rows": len(texts),
        "rows_from": rows["split"] if rows else None,
        "pytorch_rows_per_s": pytorch_speed,
        "candidates": [c.as_dict() for c, _ in candidates],
    }
    source = StudentMeta.read(student.path) or StudentMeta(student=student.kind, labels=student.labels)
    # Relative to the export, so the folder can be shared without this machine's paths.
    meta = dataclasses.replace(
        source,
        student="onnx",
        labels=student.labels,
        parameters=student.parameters,
        temperature=1.0,
        scaled_by=student.temperature,  # in the graph: logits / T + b
        class_bias=None,
        shifted_by=student.class_bias,
        exported_from=os.path.relpath(student.path.resolve(), out.resolve()),
        weights="float32" if chosen.name == "fp32" else "int8",
        export=record,
        defer=_defer(source.defer, probs, rows),
    )
    _report(candidates, chosen, why, rows, cfg, pytorch_speed)
    if meta.defer is not None and meta.defer.get("kept_from") == "evaluate":  # a threshold: none is never kept
        print(
            f"export: kept evaluate's answer-or-defer threshold ({meta.defer['threshold']:.4f}): "
            f"{len(rows['teacher'])} test rows cannot pass "
            f"target {meta.defer['target']:g} (raise --check-rows)"
        )
    meta.write(out)  # last: the export is complete
    print(
        f"export: {student.kind} student -> {out / ONNX_FILE} ({chosen.name}: {VARIANTS[chosen.name]}; "
        f"{time.perf_counter() - started:.0f} s)"
    )


def _reference(student, texts: list[str], batch_size: int) -> tuple[np.ndarray | None, float | None]:
    """The PyTorch student's probabilities on ``texts`` and its rows/s (after a warm-up batch)."""
    if not texts:
        return None, None
    student.probabilities(texts[:batch_size], batch_size)
    start = time.perf_counter()
    probs = student.probabilities(texts, batch_size)
    return probs, len(texts) / (time.perf_counter() - start)


def _same_model(student, fp32: Path, texts: list[str], reference: np.ndarray | None, batch_size: int) -> bool:
    """Whether the fused float32 graph gives the PyTorch student's probabilities (to 1e-3) on ``texts``
    (the first rows of ``reference``, the PyTorch student's probabilities, where there is one)."""
    got = onnx_student(student, fp32).probabilities(texts, batch_size)
    want = reference[: len(texts)] if reference is not None else student.probabilities(texts, batch_size)
    return bool(np.abs(got - want).max() <= 1e-3)


def _defer(source: dict | None, probs: np.ndarray | None, rows: dict | None) -> dict | None:
    """The answer-or-defer threshold for the variant served: evaluate's target, the variant's own
    confidences and agreement with the teacher on the check rows. Kept as evaluate recorded it
    when there are no rows (an fp32 export: the same model)."""
    if not source or source.get("threshold") is None or probs is None or rows is None:
        return source  # none, or none passed evaluate's target (every row deferred): the same for every variant
    probs = probs[: len(rows["teacher"])]  # the test rows: the threshold is about rows the student did not train on
    if len(probs) < math.ceil(math.log(0.05) / math.log(source["target"])):  # too few rows for any threshold to pass
        return {**source, "kept_from": "evaluate"}
    agree = probs.argmax(1) == rows["teacher"]
    picked = pick_threshold(probs.max(1), agree, source["target"])
    if not picked:
        return {"threshold": None, "target": source["target"], "recomputed_on": len(agree)}
    return {**picked, "target": source["target"], "recomputed_on": len(agree)}


def _report(
    candidates: list, chosen, why: str, rows: dict | None, cfg: ExportConfig, pytorch_speed: float | None
) -> None:
    """One line per variant measured, then the choice."""
    if rows:
        print(
            f"export: {len(rows['texts'])} {rows['split']} rows of {rows['annotations']}, "
            f"labels against the PyTorch student ({pytorch_speed:,.0f} rows/s), speed at batch {cfg.predict_batch_size}"
            + (
                f" (one changed label is {1 / len(rows['texts']):.1%} of so few rows)"
                if len(rows["texts"]) < 200
                else ""
            )
            + ":"
        )
    for c, _ in candidates:
        if c.parity is not None:
            print(
                f"  {c.name:<14} same label {c.parity:.4f}  largest probability change {c.max_prob_change:.3f}  "
                f"{c.rows_per_s:,.0f} rows/s ({c.rows_per_s / pytorch_speed:.1f}x PyTorch; "
                f"{c.rows_per_s_batch1:,.0f} at batch 1)  {c.size_mb:.1f} MB"
                + ("" if c.parity >= cfg.min_parity else f"  < {cfg.min_parity}")
            )
    print(f"export: {chosen.name}: {why}")
    if chosen.parity is not None and chosen.parity < cfg.min_parity:
        print(
            f"export: warning: {chosen.name} keeps the PyTorch student's label on {chosen.parity:.2%} of the "
            f"rows, under --min-parity {cfg.min_parity}"
        )
