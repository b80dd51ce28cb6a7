"""Fingerprints of an input's content, so a rerun on an edited input stops instead of mixing old and new
rows."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["file_fingerprint", "rows_fingerprint", "same_file", "sha256_file"]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> dict:
    """Name (not the machine's path), size, modification time and SHA-256 of an input file."""
    path = Path(path)
    info = path.stat()
    return {"name": path.name, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha256_file(path)}


def same_file(old: dict, path: str | Path) -> bool:
    """Whether ``path`` still holds what ``old`` fingerprinted: its content (SHA-256), never its size
    and modification time alone (a copy can keep both)."""
    if Path(path).stat().st_size != old.get("size"):
        return False
    return sha256_file(path) == old.get("sha256")


def rows_fingerprint(rows: pd.DataFrame, columns: list[str]) -> dict:
    """Row count and SHA-256 of ``columns`` of every row, in order: what a run annotates."""
    digest = hashlib.sha256()
    for values in rows[columns].astype(str).itertuples(index=False):
        digest.update("\x1f".join(values).encode("utf-8", "surrogatepass") + b"\x1e")
    return {"rows": len(rows), "sha256": digest.hexdigest()}
