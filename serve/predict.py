"""The predict command: read rows -> label them with the student -> write CSV, chunk by chunk.

Run it with::

    distillery predict --student data/runs/demo/student --data new_tweets.csv --predictions preds.csv
    distillery predict --student data/runs/demo/student-onnx --data reviews.jsonl --predictions preds.csv --defer
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from distillery.core.inputs import iter_texts
from distillery.core.models import pick_device
from distillery.core.options import student_folder
from distillery.core.rundir import file_fingerprint, locked, replacing, same_file, write_csv, write_json
from distillery.serve.config import PredictConfig
from distillery.serve.student import Student, load_student
from distillery.core.errors import UserError

__all__ = ["predict", "defer_threshold", "prediction_frame"]


def defer_threshold(cfg: PredictConfig, student: Student) -> float | None:
    """The confidence under which rows are deferred: the flag, else what evaluate recorded."""
    if not cfg.defer:
        return None
    if cfg.defer_threshold != -1.0:
        return cfg.defer_threshold
    recorded = student.meta.get("defer")
    if not recorded:
        raise UserError(f"--defer: expected a threshold recorded for {student.path}; found none; run 'distillery evaluate "
                         "--target-agreement 0.95' on the run first, or pass --defer-threshold")
    return recorded["threshold"]


def prediction_frame(rows: pd.DataFrame, probs: np.ndarray, labels: list[str], threshold: float | None) -> pd.DataFrame:
    """``id, text, label, p_<label>..., confidence[, deferred]`` for one chunk of rows."""
    out = rows[["id", "text"]].copy()
    out["label"] = [labels[i] for i in probs.argmax(1)]
    for k, label in enumerate(labels):
        out[f"p_{label}"] = probs[:, k]
    out["confidence"] = probs.max(1)
    if threshold is not None:
        out["deferred"] = out["confidence"] < threshold
    return out


def predict(cfg: PredictConfig) -> Path:
    """Label every row of ``cfg.data``; returns the CSV written. A killed run resumes at its last chunk.

    ``OUT.parts/`` holds the finished chunks and ``run.json`` (what this run reads: student,
    input and its content fingerprint); one process at a time writes it.
    """
    out = Path(cfg.predictions)
    if out.is_dir():
        out = out / "predictions.csv"
    parts = out.with_name(out.name + ".parts")
    folder = student_folder(cfg)
    student = load_student(folder, pick_device(cfg.device))
    threshold = defer_threshold(cfg, student)
    chunks = iter_texts(cfg.data, cfg.text_column, cfg.id_column, cfg.chunk_size, cfg.drop_empty, cfg.hf_config, cfg.split)
    first = next(chunks)  # bad input fails here, before any file is written
    with locked(parts, "predict", shown=out):
        return _predict(cfg, out, parts, student, threshold, itertools.chain([first], chunks))


def _predict(cfg: PredictConfig, out: Path, parts: Path, student: Student, threshold: float | None, chunks) -> Path:
    folder = student.path
    data = str(Path(cfg.data).resolve()) if Path(cfg.data).is_file() else cfg.data  # the same file however it is spelt
    fingerprint = {"student": str(folder.resolve()), "weights": _weights(folder), "data": data, "hf_config": cfg.hf_config, "split": cfg.split,
                   "text_column": cfg.text_column, "id_column": cfg.id_column, "drop_empty": cfg.drop_empty, "chunk_size": cfg.chunk_size,
                   "defer_threshold": threshold}
    state = _open_state(parts, fingerprint, cfg, out)
    if state["complete"]:
        for path in parts.glob("part-*.csv"):  # left by a kill between the join and their removal
            path.unlink()
        print(f"predict: {out} is complete ({state['rows']} rows); nothing to do")
        return out
    print(f"predict: {student.kind} student {folder} ({len(student.labels)} labels: {', '.join(student.labels)}) -> {out}"
          + (f"; rows under confidence {threshold:.4f} are deferred" if threshold is not None else ""))
    rows = 0
    with tqdm(unit="row", desc="predict", mininterval=0.5 if sys.stderr.isatty() else 30) as bar:
        for index, chunk in enumerate(chunks):
            path = parts / f"part-{index:05d}.csv"
            if not path.is_file():  # else written by a run that was stopped later
                frame = prediction_frame(chunk, student.probabilities(chunk["text"].tolist(), cfg.predict_batch_size), student.labels, threshold)
                write_csv(path, frame)  # whole, every field quoted: a killed run leaves whole chunks only
            rows += len(chunk)
            bar.update(len(chunk))
    _join(sorted(parts.glob("part-*.csv")), out)
    state.update(complete=True, rows=rows)
    write_json(parts / "run.json", state)
    for path in parts.glob("part-*.csv"):
        path.unlink()
    print(f"predict: {rows} rows -> {out}")
    return out


def _weights(folder: Path) -> list[dict]:
    """Fingerprints of the student's weight files: a student retrained or exported again into the same folder is another student."""
    names = ("model.onnx", "model.safetensors", "adapter_model.safetensors", "pytorch_model.bin")
    return [{"name": name, "size": (folder / name).stat().st_size, "mtime_ns": (folder / name).stat().st_mtime_ns}  # no hash: GBs for a Llama
            for name in names if (folder / name).is_file()]


def _open_state(parts: Path, fingerprint: dict, cfg: PredictConfig, out: Path) -> dict:
    """The run's state in ``OUT.parts/run.json``; a different run, or a changed input, is refused."""
    state_file = parts / "run.json"
    overwrite = cfg.overwrite
    source = Path(cfg.data) if Path(cfg.data).is_file() else None
    if state_file.is_file() and overwrite:
        _clear(parts)
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        changed = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
        if changed:
            raise UserError(f"{out}: written by another predict run (different {', '.join(changed)}); pass another --predictions, "
                            "or --overwrite to predict again")
        if source and state.get("input") and not same_file(state["input"], source):
            raise UserError(f"{cfg.data} changed since {out} was predicted from it ({state['input']['size']:,} bytes then, "
                            f"{source.stat().st_size:,} now); pass --overwrite to predict it again, or another --predictions")
        if state["complete"] and not out.is_file():  # the CSV was moved away: predict again
            _clear(parts)
        else:
            return state
    elif out.is_file() and not overwrite:
        raise UserError(f"{out}: exists and was not written by this predict run; pass another --predictions, or --overwrite to replace it")
    state = {"fingerprint": fingerprint, "input": file_fingerprint(source) if source else None, "complete": False, "rows": 0}
    write_json(state_file, state)
    return state


def _clear(parts: Path) -> None:
    """Forget an earlier run in ``parts`` (its lock file stays: this process holds it)."""
    for path in [parts / "run.json", *parts.glob("part-*.csv")]:
        path.unlink(missing_ok=True)


def _join(paths: list[Path], out: Path) -> None:
    """Concatenate the chunk CSVs into ``out`` (one header), streaming, then put it in place whole."""
    with replacing(out) as dst:
        for i, path in enumerate(paths):
            with open(path, encoding="utf-8", newline="") as src:
                header = src.readline()
                if i == 0:
                    dst.write(header)
                shutil.copyfileobj(src, dst)
