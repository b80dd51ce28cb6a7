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
from pathlib import Path

import pandas as pd

from distillery.core.annotations import FORMAT, ManifestError, read_chunk, read_manifest, run_id
from distillery.core.fingerprints import sha256_file
from distillery.core.rundir import append_csv, remove_owned, write_json, write_text

__all__ = ["ChunkStore"]


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
        old_manifest = read_manifest(self.manifest_path) if self.manifest_path.is_file() else None
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
        frame = read_chunk(path)
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

    def read_all(self) -> dict[str, pd.DataFrame]:
        """Every chunk the manifest lists, by file name, in order."""
        return {name: read_chunk(self.root / name) for name in sorted(self.manifest["chunks"])}

    def rewrite(self, frames: dict[str, pd.DataFrame]) -> None:
        """Write ``frames`` (from :meth:`read_all`) back, each chunk whole."""
        for name, frame in frames.items():
            self.write(int(name[5:10]), frame)
