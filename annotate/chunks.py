"""Annotation chunks on disk: ``OUT/annotations/part-NNNNN.csv`` plus ``manifest.json``.

Each chunk is written whole (temp file, fsync, rename) and every row names the run that wrote
it (``run_id``, a hash of the run's fingerprint), so a chunk describes itself: a run killed at
any point, or whose manifest was lost, resumes from the chunks on disk. Every chunk's checksum
is checked on resume and on read; a chunk cut or edited after it was written stops the run
with its file name. The file format is documented in docs/ ("File formats").
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from distillery.annotate.calibration import fit_calibration
from distillery.core.errors import UserError
from distillery.core.registry import calibration_modes
from distillery.core.reviewed import reviewed_fingerprint
from distillery.core.rundir import append_csv, remove_owned, sha256_file, write_json, write_text

__all__ = [
    "FORMAT",
    "ChunkStore",
    "ManifestError",
    "read_annotations",
    "label_columns",
    "run_id",
    "teacher_probabilities",
]

FORMAT = "distillery.annotations/1"


class ManifestError(UserError):
    """The annotations directory is missing, incomplete, or from another teacher/prompt/label set."""


def label_columns(labels: list[str], raw: bool = False) -> list[str]:
    """Column names of the per-label natural-log probabilities (``logprob_<label>``)."""
    return [f"{'raw_' if raw else ''}logprob_{lab}" for lab in labels]


def teacher_probabilities(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """The teacher's calibrated probabilities of ``frame``'s rows; a row with a hard label only
    (a hosted teacher that gave no log-probs) is one-hot."""
    probs = np.exp(frame[label_columns(labels)].to_numpy(float))
    hard_only = np.isnan(probs).any(axis=1)
    probs[hard_only] = np.eye(len(labels))[frame.loc[hard_only, "teacher_label"].map(labels.index).to_numpy(int)]
    return probs


def run_id(fingerprint: dict) -> str:
    """A short hash of a run's fingerprint, written into every row of its chunks."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_chunk(path: Path) -> pd.DataFrame:
    # Text columns keep "NA", "null" etc. as written; only the number columns have blanks.
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ManifestError(
            f"{path}: not a whole chunk ({str(err).splitlines()[0]}); it was cut or edited after it was written; "
            "delete it and rerun 'distillery annotate' to annotate its rows again"
        ) from None
    for col in frame.columns:
        if col.startswith(("logprob_", "raw_logprob_")) or col == "label_mass":
            frame[col] = pd.to_numeric(frame[col].replace("", np.nan))
    return frame


def _read_manifest(path: Path) -> dict:
    """A manifest as a dict; one that does not parse is a one-line error naming it (it is never deleted)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(
            f"{path}: not a manifest distillery can read ({str(err).splitlines()[0]}); it is kept as it is: "
            "move it away to annotate again, or pass another --out"
        ) from None
    if not isinstance(manifest, dict):
        raise ManifestError(
            f"{path}: expected a JSON object; found {type(manifest).__name__}; move it away, or pass another --out"
        )
    return manifest


def _difference(key: str, old, new) -> str:
    """What changed under ``key``: only the inner keys that differ, where both are mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        inner = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return "; ".join(f"{key}.{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in inner)
    return f"{key}: {old!r} there, {new!r} now"


class ChunkStore:
    """The chunk files and manifest of one annotation run.

    Args:
        root: the ``OUT/annotations`` directory.
        fingerprint: what must not change between a run and its resume (teacher, prompt hash,
            labels, data selection, chunk size).
        manifest_extra: written into the manifest as is (resolved config, task, ...).
        restart: start over: the chunks and manifest of an earlier run in ``root`` are deleted
            (only files Distillery wrote there; a manifest that does not parse is never deleted).
    """

    def __init__(self, root: Path, fingerprint: dict, manifest_extra: dict, restart: bool = False):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.run_id = run_id(fingerprint)
        old_manifest = _read_manifest(self.manifest_path) if self.manifest_path.is_file() else None
        if restart:
            for path in [self.manifest_path, *self.root.glob("part-*.csv")]:
                remove_owned(path)
            old_manifest = None
        if old_manifest is not None:
            self.manifest = old_manifest
            old = self.manifest.get("fingerprint", {})
            changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            if changed:
                what = "; ".join(_difference(k, old.get(k), fingerprint.get(k)) for k in changed)
                raise ManifestError(
                    f"{self.root} holds annotations from a different run ({what}); "
                    "pass another --out, or --restart-annotations to start over (the old annotations are deleted)"
                )
            self.manifest.update(manifest_extra)
        else:  # a new run, or one whose manifest was lost: existing() adopts the chunks it wrote
            self.root.mkdir(parents=True, exist_ok=True)
            self.manifest = {
                "format": FORMAT,
                "fingerprint": fingerprint,
                **manifest_extra,
                "chunks": {},
                "status": "annotating",
            }

    def chunk_path(self, index: int) -> Path:
        return self.root / f"part-{index:05d}.csv"

    def existing(self, index: int, rows: pd.DataFrame) -> pd.DataFrame | None:
        """The chunk already on disk for these rows (``id, text, gold, split``), or None.

        Its checksum is checked against the manifest; a chunk the manifest does not list (the
        manifest was lost, or the run was killed between the two writes) is taken back when
        this run wrote it. A chunk whose rows differ from ``rows`` means the input changed.
        """
        path = self.chunk_path(index)
        meta = self.manifest["chunks"].get(path.name)
        if not path.is_file():
            self.manifest["chunks"].pop(path.name, None)  # listed just before a write that never happened
            return None
        digest = sha256_file(path)
        if meta is not None and digest not in (meta["sha256"], meta.get("was")):
            raise ManifestError(
                f"{path} does not match its checksum in the manifest (cut or edited after it was written); "
                "delete it and rerun 'distillery annotate' to annotate its rows again"
            )
        frame = _read_chunk(path)
        if "run_id" not in frame.columns or set(frame["run_id"]) != {self.run_id}:
            raise ManifestError(
                f"{path} was not written by this run (another teacher, prompt, label set, data selection or "
                "chunk size); "
                "pass another --out, or --restart-annotations to start over"
            )
        keys = ["id", "text", "gold", "split"]
        if len(frame) != len(rows) or not frame[keys].reset_index(drop=True).equals(
            rows[keys].astype(str).reset_index(drop=True)
        ):
            differ = (
                len(rows)
                if len(frame) != len(rows)
                else int((frame[keys].to_numpy() != rows[keys].astype(str).to_numpy()).any(axis=1).sum())
            )
            raise ManifestError(
                f"the input changed since {path} was annotated ({differ} of its rows differ in id, text, gold label "
                "or split, or rows were added or removed); pass --restart-annotations to annotate everything again, "
                "or another --out"
            )
        if meta is None or digest != meta["sha256"]:
            self._record(path, frame, digest)
            self.save_manifest()
        return frame

    def _record(self, path: Path, frame: pd.DataFrame, digest: str, was: str | None = None) -> None:
        entry = {"rows": len(frame), "errors": int((frame["error_type"] != "").sum()), "sha256": digest}
        if was:
            entry["was"] = was
        self.manifest["chunks"][path.name] = entry

    def write(self, index: int, frame: pd.DataFrame) -> None:
        """Write one chunk whole, its checksum recorded in the manifest first.

        The manifest keeps the old checksum too until the new file is in place, so a kill
        between the two writes leaves a chunk that matches one of them.
        """
        path = self.chunk_path(index)
        frame["run_id"] = self.run_id
        text = io.StringIO()
        append_csv(text, frame, header=True)  # every field quoted: tweets hold bare carriage returns
        text = text.getvalue()
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        old = self.manifest["chunks"].get(path.name)
        self._record(path, frame, digest, was=old["sha256"] if old and path.is_file() else None)
        self.save_manifest()
        write_text(path, text)
        self.manifest["chunks"][path.name].pop("was", None)
        self.save_manifest()

    def save_manifest(self) -> None:
        write_json(self.manifest_path, self.manifest)

    def finalize(
        self,
        labels: list[str],
        mode: str,
        bias_content_free: list[float] | None,
        calibrate_on: int = 200,
        requested: str | None = None,
        reviewed: dict[str, str] | None = None,
    ) -> dict:
        """Apply calibration to every chunk and mark the run complete. Returns the calibration record.

        ``mode`` is a resolved mode (not ``auto``: the caller resolves it with
        :func:`annotate.calibration.resolve_mode`, which knows how the rows were sampled); the
        modes are described in :mod:`annotate.calibration`. ``gold`` fits on the first
        ``calibrate_on`` non-test rows with a gold label; ``reviewed`` on every row with a human
        label in ``reviewed`` (``{id: label}``, from ``OUT/review/gold.csv``). ``requested`` is what
        the user asked for (e.g. ``auto``), kept in the record.
        """
        self.manifest["status"] = (
            "calibrating"  # not complete while chunks are rewritten: a kill here is not read as done
        )
        self.save_manifest()
        names = sorted(self.manifest["chunks"])
        frames = {name: _read_chunk(self.root / name) for name in names}
        raw_cols, cal_cols = label_columns(labels, raw=True), label_columns(labels)

        def soft(f: pd.DataFrame) -> pd.Series:  # rows with soft labels; hard-label-only rows keep theirs
            return (f["error_type"] == "") & f[raw_cols].notna().all(axis=1)

        ok = (
            pd.concat([f[soft(f)] for f in frames.values()])
            if frames
            else pd.DataFrame(columns=[*raw_cols, "gold", "split"])
        )
        entry = calibration_modes.get(mode)
        if entry.needs_review:
            human = ok["id"].map(reviewed or {})
            fit_rows = ok[human.isin(labels)].assign(gold=human[human.isin(labels)].to_numpy())
        else:
            fit_rows = ok[ok["gold"].isin(labels) & (ok["split"] != "test")].head(calibrate_on)
        calibration = fit_calibration(
            mode,
            ok[raw_cols].to_numpy(float),
            bias_content_free,
            fit_rows[raw_cols].to_numpy(float),
            fit_rows["gold"].map(labels.index).to_numpy(),
        )
        if entry.needs_review:
            calibration.extra["reviewed"] = reviewed_fingerprint(
                reviewed or {}
            )  # annotate refits when the labels change
        elif entry.needs_gold:
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
        mass = ok["label_mass"].dropna() if "label_mass" in ok else pd.Series(dtype=float)
        self.manifest.update(
            status="complete",
            calibration=record,
            rows=n_rows,
            rows_failed=n_err,
            label_mass_median=float(mass.median()) if len(mass) else None,
        )
        self.save_manifest()
        return record


def read_annotations(root: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read every chunk of a finished annotation run, checked against its manifest.

    Returns the rows (failed ones included, with ``error_type`` set) and the manifest.
    """
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ManifestError(
            f"expected an annotations directory with manifest.json; found none in '{root}'; run 'distillery "
            "annotate' first"
        )
    manifest = _read_manifest(manifest_path)
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{manifest_path}: expected format {FORMAT}; found {manifest.get('format')!r}")
    if manifest.get("status") != "complete":
        raise ManifestError(
            f"{root}: annotation is not finished (status {manifest.get('status')!r}); rerun the same "
            "'distillery annotate' command to finish it"
        )
    frames = []
    for name, meta in sorted(manifest["chunks"].items()):
        path = root / name
        if not path.is_file():
            raise ManifestError(
                f"{path} is listed in the manifest but missing; rerun 'distillery annotate' to rebuild it"
            )
        if sha256_file(path) != meta["sha256"]:
            raise ManifestError(
                f"{path} does not match its checksum in the manifest (edited or truncated?); delete it and "
                "rerun 'distillery annotate'"
            )
        frames.append(_read_chunk(path))
    if not frames:
        raise ManifestError(f"{root}: the manifest lists no chunks; rerun 'distillery annotate' to annotate the rows")
    frame = pd.concat(frames, ignore_index=True)
    twice = frame["id"][frame["id"].duplicated()]
    if len(twice):
        raise ManifestError(
            f"{root}: {twice.nunique()} ids appear in more than one row (e.g. '{twice.iloc[0]}'); the chunks were "
            "mixed from two runs; pass --restart-annotations to 'distillery annotate' to annotate them again"
        )
    needed = ["id", "text", "gold", "split", "teacher_label", *label_columns(manifest["labels"]), "error_type"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{root}: chunks lack columns {missing}; they were not written by this version of distillery"
        )
    return frame, manifest
