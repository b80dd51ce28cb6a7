"""Annotation chunks on disk: ``OUT/annotations/part-NNNNN.csv`` plus ``manifest.json``.

Each chunk is written atomically (temp file, fsync, rename) and the manifest after it, so a
run killed at any point leaves only whole chunks; a rerun skips finished chunks and retries
errored rows. The file format is documented in the README ("File formats").
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from annotate.calibration import fit_calibration
from annotate.errors import UserError

__all__ = ["FORMAT", "ChunkStore", "ManifestError", "read_annotations", "label_columns"]

FORMAT = "distillery.annotations/1"


class ManifestError(UserError):
    """The annotations directory is missing, incomplete, or from another teacher/prompt/label set."""


def label_columns(labels: list[str], raw: bool = False) -> list[str]:
    """Column names of the per-label natural-log probabilities (``logprob_<label>``)."""
    return [f"{'raw_' if raw else ''}logprob_{lab}" for lab in labels]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_chunk(path: Path) -> pd.DataFrame:
    # Text columns keep "NA", "null" etc. as written; only the number columns have blanks.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in frame.columns:
        if col.startswith(("logprob_", "raw_logprob_")) or col == "label_mass":
            frame[col] = pd.to_numeric(frame[col].replace("", np.nan))
    return frame


class ChunkStore:
    """The chunk files and manifest of one annotation run.

    Args:
        root: the ``OUT/annotations`` directory.
        fingerprint: what must not change between a run and its resume (teacher, prompt hash,
            labels, data selection, chunk size).
        manifest_extra: written into the manifest as is (resolved config, task, ...).
    """

    def __init__(self, root: Path, fingerprint: dict, manifest_extra: dict):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        if self.manifest_path.is_file():
            self.manifest = json.loads(self.manifest_path.read_text())
            old = self.manifest.get("fingerprint", {})
            changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            if changed:
                what = "; ".join(f"{k}: {old.get(k)!r} there, {fingerprint.get(k)!r} now" for k in changed)
                raise ManifestError(
                    f"{self.root} holds annotations from a different run ({what}); "
                    "pass a new --out, or delete that directory to start over"
                )
            self.manifest.update(manifest_extra)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self.manifest = {"format": FORMAT, "fingerprint": fingerprint, **manifest_extra, "chunks": {}, "status": "annotating"}

    def chunk_path(self, index: int) -> Path:
        return self.root / f"part-{index:05d}.csv"

    def existing(self, index: int, ids: list[str]) -> pd.DataFrame | None:
        """The chunk already on disk for these ids, or None; a chunk with other ids is an error."""
        path = self.chunk_path(index)
        if not path.is_file():
            return None
        frame = _read_chunk(path)
        if frame["id"].tolist() != ids:
            raise ManifestError(f"{path} holds other rows than this run expects; delete it (or pass a new --out) and rerun")
        return frame

    def write(self, index: int, frame: pd.DataFrame) -> None:
        """Write one chunk atomically, then record it in the manifest."""
        path = self.chunk_path(index)
        # Quote every text field: tweets hold bare carriage returns that would split a row.
        _atomic_write(path, frame.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC))
        n_err = int((frame["error_type"] != "").sum())
        self.manifest["chunks"][path.name] = {"rows": len(frame), "errors": n_err, "sha256": _sha256(path)}
        self.save_manifest()

    def save_manifest(self) -> None:
        _atomic_write(self.manifest_path, json.dumps(self.manifest, indent=2, default=str) + "\n")

    def finalize(self, labels: list[str], mode: str, bias_content_free: list[float] | None, calibrate_on: int = 200,
                 requested: str | None = None) -> dict:
        """Apply calibration to every chunk and mark the run complete. Returns the calibration record.

        ``mode`` is a resolved mode (not ``auto``: the caller resolves it with
        :func:`annotate.calibration.resolve_mode`, which knows how the rows were sampled); the
        modes are described in :mod:`annotate.calibration`. ``gold`` fits on the first
        ``calibrate_on`` non-test rows with a gold label. ``requested`` is what the user asked
        for (e.g. ``auto``), kept in the record.
        """
        names = sorted(self.manifest["chunks"])
        frames = {name: _read_chunk(self.root / name) for name in names}
        raw_cols, cal_cols = label_columns(labels, raw=True), label_columns(labels)

        def soft(f: pd.DataFrame) -> pd.Series:  # rows with soft labels; hard-label-only rows keep theirs
            return (f["error_type"] == "") & f[raw_cols].notna().all(axis=1)

        ok = pd.concat([f[soft(f)] for f in frames.values()]) if frames else pd.DataFrame(columns=[*raw_cols, "gold", "split"])
        gold_rows = ok[ok["gold"].isin(labels) & (ok["split"] != "test")]
        fit_rows = gold_rows.head(calibrate_on)
        calibration = fit_calibration(mode, ok[raw_cols].to_numpy(float), bias_content_free,
                                      fit_rows[raw_cols].to_numpy(float), fit_rows["gold"].map(labels.index).to_numpy())
        if mode == "gold":
            calibration.extra["calibrate_on"] = calibrate_on
        for name, frame in frames.items():
            good = soft(frame)
            if good.any():
                cal = calibration.apply(frame.loc[good, raw_cols].to_numpy(float))
                frame.loc[good, cal_cols] = cal
                frame.loc[good, "teacher_label"] = [labels[i] for i in cal.argmax(axis=1)]
            self.write(int(name[5:10]), frame)
        n_rows = sum(len(f) for f in frames.values())
        n_err = sum(int((f["error_type"] != "").sum()) for f in frames.values())
        record = {**calibration.record(labels), "requested": requested or mode}
        self.manifest.update(status="complete", calibration=record, rows=n_rows, rows_failed=n_err)
        self.save_manifest()
        return record


def read_annotations(root: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read every chunk of a finished annotation run, checked against its manifest.

    Returns the rows (failed ones included, with ``error_type`` set) and the manifest.
    """
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ManifestError(f"expected an annotations directory with manifest.json; found none in '{root}'; run 'distillery annotate' first")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{manifest_path}: expected format {FORMAT}; found {manifest.get('format')!r}")
    if manifest.get("status") != "complete":
        raise ManifestError(f"{root}: annotation is not finished (status {manifest.get('status')!r}); rerun the same 'distillery annotate' command to finish it")
    frames = []
    for name, meta in sorted(manifest["chunks"].items()):
        path = root / name
        if not path.is_file():
            raise ManifestError(f"{path} is listed in the manifest but missing; rerun 'distillery annotate' to rebuild it")
        if _sha256(path) != meta["sha256"]:
            raise ManifestError(f"{path} does not match its checksum in the manifest (edited or truncated?); delete it and rerun 'distillery annotate'")
        frames.append(_read_chunk(path))
    frame = pd.concat(frames, ignore_index=True)
    needed = ["id", "text", "gold", "split", "teacher_label", *label_columns(manifest["labels"]), "error_type"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ManifestError(f"{root}: chunks lack columns {missing}; they were not written by this version of distillery")
    return frame, manifest
