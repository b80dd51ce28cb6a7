"""The predict command: read rows -> label them with the student -> write CSV, chunk by chunk.

Run it with::

    distillery predict --student data/runs/demo/student --data new_tweets.csv --predictions preds.csv
    distillery predict --student data/runs/demo/student-onnx --data reviews.jsonl --predictions preds.csv --defer
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from distillery.core.errors import UserError
from distillery.core.fingerprints import file_fingerprint, sha256_file
from distillery.core.inputs import iter_texts
from distillery.core.lock import LOCK_FILE, locked
from distillery.core.models import pick_device
from distillery.core.run import Run
from distillery.core.rundir import (
    append_csv,
    foreign,
    remove_leftovers,
    remove_owned,
    replacing,
    write_json,
    write_text,
)
from distillery.serve.config import PredictConfig
from distillery.student import Student, load_student

__all__ = ["predict", "defer_threshold", "prediction_frame", "cut_rows", "DEFER_ALL"]

DEFER_ALL = math.inf  # the threshold of a student that evaluate found none for: every row is deferred
# What a student computes with (evaluate rewrites its record and card beside them, so those are left out).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx.data", ".onnx_data", ".pt", ".pth")
MODEL_FILES = (
    "config.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
CHARS_PER_TOKEN = 8  # a row is cut to 8 characters per token of the student's window (annotate's automatic bound)
MOST_CHARS_PER_TOKEN = 64  # ... doubled while the cut fills less than the window, up to this many


def defer_threshold(cfg: PredictConfig, student: Student) -> float | None:
    """The confidence under which rows are deferred: the flag, else what evaluate recorded.

    ``DEFER_ALL`` where evaluate ran and found no threshold that passes its target: every row is
    deferred (no confidence is high enough for the student to answer alone)."""
    if not cfg.defer:
        return None
    if cfg.defer_threshold != -1.0:
        return cfg.defer_threshold
    recorded = student.meta.get("defer")
    if recorded and recorded.get("threshold") is not None:
        return recorded["threshold"]
    if recorded:  # evaluated with a target: no threshold passed it
        return DEFER_ALL
    if student.meta.get("evaluation"):
        raise UserError(
            f"--defer: expected a threshold recorded for {student.path}; found none: evaluate ran with "
            "--target-agreement 0; rerun 'distillery evaluate --target-agreement 0.95', or pass --defer-threshold"
        )
    raise UserError(
        f"--defer: expected a threshold recorded for {student.path}; found none (it was never evaluated); run "
        "'distillery evaluate --target-agreement 0.95' on the run first, or pass --defer-threshold"
    )


def _deferring(threshold: float | None, student: Student) -> str:
    """What ``--defer`` does this run, said where predict starts (a line of its own when every row defers)."""
    if threshold is None:
        return ""
    if threshold != DEFER_ALL:
        return f"; rows under confidence {threshold:.4f} are deferred"
    target = (student.meta.get("defer") or {}).get("target")
    keeps = f"agreement >= {target:g} (95% lower bound)" if target else "its --target-agreement"
    return (
        f"\npredict: --defer: evaluate found no confidence threshold at which the student keeps {keeps} with the "
        "teacher; every row is deferred to the teacher (pass --defer-threshold to have the student answer some)"
    )


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
    input and its content hash, and each finished chunk's checksum); one process at a time
    writes it. A refused run leaves nothing new on disk.
    """
    out = Run.predictions(Path(cfg.predictions))
    seen = Path(os.path.abspath(out))  # 'new/../in.csv' is in.csv even where new/ does not exist
    if Path(cfg.data).is_file() and seen.exists() and os.path.samefile(seen, cfg.data):  # however either is spelt
        raise UserError(
            f"--predictions {out}: expected a file other than the input; found the --data file itself ({cfg.data}); "
            "pass another --predictions"
        )
    parts = out.with_name(out.name + ".parts")
    mine = foreign(seen) + [f"{parts.name}/{name}" for name in foreign(seen.with_name(parts.name))]
    if mine:  # whatever --restart-predictions says: a file distillery did not write is never replaced or deleted
        raise UserError(
            f"--predictions {out}: {', '.join(mine[:3])} exists and was not written by this predict run (nor any "
            "distillery run: it is never replaced); pass another --predictions, or move it away"
        )
    folder = Run.of(cfg).student
    student = load_student(folder, pick_device(cfg.device))
    threshold = defer_threshold(cfg, student)
    chunks = iter_texts(
        cfg.data, cfg.text_column, cfg.id_column, cfg.chunk_size, cfg.drop_empty, cfg.hf_config, cfg.split
    )
    first = next(chunks)  # bad input fails here, before any file is written
    created = not parts.exists()
    with locked(parts, "predict", shown=out, flag="--predictions"):
        remove_leftovers(parts)  # a killed run's half-written part
        try:
            return _predict(cfg, out, parts, student, threshold, itertools.chain([first], chunks))
        except BaseException:
            if created:
                _remove_if_empty(parts)
            raise


def _predict(cfg: PredictConfig, out: Path, parts: Path, student: Student, threshold: float | None, chunks) -> Path:
    folder = student.path
    data = str(Path(cfg.data).resolve()) if Path(cfg.data).is_file() else cfg.data  # the same file however it is spelt
    fingerprint = {
        "student": str(folder.resolve()),
        "weights": _weights(folder),
        "data": data,
        "hf_config": cfg.hf_config,
        "split": cfg.split,
        "text_column": cfg.text_column,
        "id_column": cfg.id_column,
        "drop_empty": cfg.drop_empty,
        "chunk_size": cfg.chunk_size,
        "defer_threshold": "all" if threshold == DEFER_ALL else threshold,  # JSON has no infinity
    }
    state = _open_state(parts, fingerprint, cfg, out)
    if state["complete"]:
        for path in parts.glob("part-*.csv"):  # left by a kill between the join and their removal
            remove_owned(path)
        print(f"predict: {out} is complete ({state['rows']} rows); nothing to do")
        return out
    print(
        f"predict: {student.kind} student {folder} ({len(student.labels)} labels: {', '.join(student.labels)}) -> {out}"
        + _deferring(threshold, student)
    )
    rows, paths = 0, []
    with tqdm(unit="row", desc="predict", mininterval=0.5 if sys.stderr.isatty() else 30) as bar:
        for index, chunk in enumerate(chunks):
            path = parts / f"part-{index:05d}.csv"
            if not _finished(path, state):  # else written whole by a run that was stopped later
                frame = prediction_frame(
                    chunk,
                    student.probabilities(
                        cut_rows(chunk["text"].tolist(), student.tokenizer, student.window), cfg.predict_batch_size
                    ),
                    student.labels,
                    threshold,
                )
                _write_part(parts, path, frame, state)
            paths.append(path)
            rows += len(chunk)
            bar.update(len(chunk))
    _join(paths, out)
    state.update(complete=True, rows=rows, parts={})
    write_json(parts / "run.json", state)
    for path in parts.glob("part-*.csv"):
        remove_owned(path)
    print(f"predict: {rows} rows -> {out}")
    return out


def _finished(path: Path, state: dict) -> bool:
    """Whether ``path`` is a chunk this run wrote whole: its checksum is the one ``run.json`` records."""
    if not path.is_file():
        return False
    if sha256_file(path) == state["parts"].get(path.name):
        return True
    print(
        f"predict: {path} does not match its checksum in run.json (cut or edited after it was written); "
        "predicting its rows again"
    )
    return False


def _write_part(parts: Path, path: Path, frame: pd.DataFrame, state: dict) -> None:
    """Write one chunk whole (every field quoted), its checksum recorded in ``run.json`` first.

    A part is only written where none matches its record, so no good part is replaced: a kill
    between the two writes leaves a part that does not match, which the next run predicts again.
    """
    text = io.StringIO()
    append_csv(text, frame, header=True)
    text = text.getvalue()
    state["parts"][path.name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    write_json(parts / "run.json", state)
    write_text(path, text)


def cut_rows(texts: list[str], tokenizer, window: int) -> list[str]:
    """Each text as the student reads it, cut by characters before it is tokenized.

    The student reads the first ``window`` tokens of a row (``Student.window``) and
    nothing after them, so a longer row is cut to 8 characters per token of the window (annotate's
    automatic ``--max-row-chars``) before the tokenizer sees it: a row of megabytes costs what a
    row that fills the window costs. Where the cut gives fewer tokens than the window holds, it is
    doubled until it gives more, up to 64 characters per token: the student reads the same tokens
    as from the whole row, except in a row whose first characters average over 64 a token.
    """
    return [text if len(text) <= CHARS_PER_TOKEN * window else _cut(text, tokenizer, window) for text in texts]


def _cut(text: str, tokenizer, window: int) -> str:
    chars = CHARS_PER_TOKEN * window
    while chars < len(text):
        head = text[:chars]
        if chars >= MOST_CHARS_PER_TOKEN * window:
            return head
        if len(tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"]) > window:
            return head
        chars *= 2
    return text


def _weights(folder: Path) -> list[dict]:
    """SHA-256 of the student's weight files, its model config and its tokenizer, hashed once per run:
    another student's weights copied into the folder, even with their size and time kept, are another
    student (and so is a student retrained or exported again into it)."""
    return [
        {"name": path.name, "sha256": sha256_file(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and (path.name in MODEL_FILES or path.name.endswith(WEIGHT_SUFFIXES))
    ]


def _open_state(parts: Path, fingerprint: dict, cfg: PredictConfig, out: Path) -> dict:
    """The run's state in ``OUT.parts/run.json``; a different run, or a changed input, is refused."""
    state_file = parts / "run.json"
    restart = cfg.restart_predictions
    source = Path(cfg.data) if Path(cfg.data).is_file() else None
    if state_file.is_file() and restart:
        _clear(parts)
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
            changed = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(
                f"{state_file}: not a predict state distillery can read (cut or edited); it is kept as it is: pass "
                "another --predictions, or --restart-predictions to predict again"
            ) from None
        if changed:
            raise UserError(
                f"{out}: written by another predict run (different {', '.join(changed)}); pass another --predictions, "
                "or --restart-predictions to predict again"
            )
        digest = (
            sha256_file(source) if source and state.get("input") else None
        )  # its content: an edit can keep size and mtime
        if digest and digest != state["input"].get("sha256"):
            raise UserError(
                f"{cfg.data} changed since {out} was predicted from it (SHA-256 "
                f"{str(state['input'].get('sha256'))[:12]} then, "
                f"{digest[:12]} now); pass --restart-predictions to predict it again, or another --predictions"
            )
        if state["complete"] and not out.is_file():  # the CSV was moved away: predict again
            _clear(parts)
        else:
            state.setdefault("parts", {})  # a run.json from before parts had checksums: its parts are predicted again
            return state
    elif out.is_file() and not restart:
        raise UserError(
            f"{out}: exists and was not written by this predict run; pass another --predictions, or "
            "--restart-predictions to replace it"
        )
    state = {
        "fingerprint": fingerprint,
        "input": file_fingerprint(source) if source else None,
        "complete": False,
        "rows": 0,
        "parts": {},
    }
    write_json(state_file, state)
    return state


def _clear(parts: Path) -> None:
    """Forget an earlier run in ``parts`` (its lock file stays: this process holds it); only files
    distillery wrote go."""
    for path in [parts / "run.json", *parts.glob("part-*.csv")]:
        remove_owned(path)


def _remove_if_empty(parts: Path) -> None:
    """Remove ``parts`` (made by this refused or stopped run) if it holds nothing but its lock file."""
    if parts.is_dir() and all(p.name == LOCK_FILE for p in parts.iterdir()):
        (parts / LOCK_FILE).unlink(missing_ok=True)  # while the lock is held: no other run is inside it
        with contextlib.suppress(OSError):  # another run made it again meanwhile: it is theirs
            parts.rmdir()


def _join(paths: list[Path], out: Path) -> None:
    """Concatenate the chunk CSVs into ``out`` (one header), streaming, then put it in place whole."""
    with replacing(out) as dst:
        for i, path in enumerate(paths):
            with open(path, encoding="utf-8", newline="") as src:
                header = src.readline()
                if i == 0:
                    dst.write(header)
                shutil.copyfileobj(src, dst)
