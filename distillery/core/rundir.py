"""The run-directory layer every stage writes through.

- :func:`locked`: one writer per output folder. A second ``distillery`` process on the same
  folder stops at once with the pid and start time of the one that holds it; the lock dies
  with its process (``fcntl.flock``), so a kill -9 never leaves a stale lock.
- :func:`replacing`, :func:`write_text`, :func:`write_json`, :func:`write_csv`: whole-file
  writes (a temporary file in the same folder, fsync, ``os.replace``): a kill at any instant
  leaves the old file or the new one, never a torn one. Every CSV quotes every field, so a
  text with a bare carriage return, a newline, a quote or a comma reads back as one field.
- :func:`claim_folder`, :func:`guard_files`, :func:`record_files`: a stage never writes over a
  file it did not write. A folder's ``.distillery-files.json`` lists what Distillery wrote
  there (or claims the whole folder); anything else makes the stage stop unless ``--overwrite``.
- :func:`file_fingerprint`, :func:`same_file`, :func:`rows_fingerprint`: fingerprints of an
  input's content, so a rerun on an edited input stops instead of mixing old and new rows.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from distillery.core.errors import UserError

__all__ = [
    "RunLocked", "ForeignFiles", "locked", "replacing", "write_text", "write_json", "write_csv", "append_csv",
    "claimed", "check_folder", "claim_folder", "guard_files", "record_files", "file_fingerprint", "same_file", "rows_fingerprint", "sha256_file",
]

LOCK_FILE = ".distillery.lock"
OWNED_FILE = ".distillery-files.json"
_held: dict[str, list] = {}  # folder -> [open lock file, depth]: a process may re-enter its own lock (run -> annotate)


class RunLocked(UserError):
    """Another distillery process is writing the same folder."""


class ForeignFiles(UserError):
    """A stage would write over files that Distillery did not write."""


def _main_process() -> bool:
    """False in the other ranks of ``accelerate launch``: rank 0 checks and claims for the run."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def locked(folder: str | Path, command: str, shown: str | Path | None = None, flag: str = "--out") -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) while the block runs.

    Under ``accelerate launch`` only rank 0 takes it (the other ranks are the same run).
    ``shown`` is what the refusal names (predict's output file rather than its parts folder),
    ``flag`` the option that chooses the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held or not _main_process():
        if key in _held:
            _held[key][1] += 1
        try:
            yield folder
        finally:
            if key in _held:
                _held[key][1] -= 1
        return
    fh = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = "starting up"
        for _ in range(40):  # the holder writes who it is right after it takes the lock: wait up to 2 s for that
            fh.seek(0)
            try:
                info = json.loads(fh.read())
                who = f"pid {info['pid']}, 'distillery {info['command']}', started {info['started']}"
                break
            except (ValueError, KeyError, TypeError):
                time.sleep(0.05)
        fh.close()
        raise RunLocked(f"another distillery process ({who}) is writing {shown or folder}; wait for it to finish, or pass another {flag}") from None
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    fh.flush()
    _held[key] = [fh, 1]
    try:
        yield folder
    finally:
        _held.pop(key, None)
        fh.close()  # closing the file releases the lock


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator:
    """A text file handle whose content replaces ``path`` whole when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` whole."""
    with replacing(path) as fh:
        fh.write(text)


def write_json(path: str | Path, value) -> None:
    """Replace ``path`` with ``value`` as indented JSON."""
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def append_csv(fh, frame: pd.DataFrame, header: bool) -> None:
    """Write ``frame`` to an open file, every field quoted (a bare ``\\r`` stays inside its field)."""
    frame.to_csv(fh, index=False, header=header, quoting=csv.QUOTE_ALL)


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Replace ``path`` with ``frame`` as CSV, every field quoted."""
    with replacing(path) as fh:
        append_csv(fh, frame, header=True)


def _owned(folder: Path) -> dict:
    marker = folder / OWNED_FILE
    if not marker.is_file():
        return {"folder": False, "files": []}
    try:
        return json.loads(marker.read_text())
    except ValueError:  # unreadable marker: claim nothing rather than everything
        return {"folder": False, "files": []}


def _ours(name: str) -> bool:
    """The lock, the marker, and the temporary files of whole-file writes (``.NAME.tmpPID``)."""
    return name.startswith(".distillery") or re.fullmatch(r"\..+\.tmp\d+", name) is not None


def _others(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not _ours(p.name))


def claimed(folder: str | Path) -> bool:
    """Whether Distillery made ``folder`` (its marker claims the whole folder)."""
    return Path(folder).is_dir() and _owned(Path(folder))["folder"]


def check_folder(folder: str | Path, overwrite: bool, flag: str = "--out") -> None:
    """Stop if ``folder`` holds files of someone else's (and ``overwrite`` is not given), naming them."""
    folder = Path(folder)
    if folder.is_dir() and not overwrite and _main_process() and not _owned(folder)["folder"]:
        others = _others(folder)
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise ForeignFiles(f"{folder} holds files distillery did not write ({shown}); pass another {flag}, "
                               "or --overwrite to write there anyway")


def claim_folder(folder: str | Path, overwrite: bool, flag: str = "--out") -> Path:
    """Make ``folder`` Distillery's: new or empty, already claimed, or ``overwrite`` given.

    A folder holding files of someone else's stops the stage with their names.
    """
    folder = Path(folder)
    check_folder(folder, overwrite, flag)
    folder.mkdir(parents=True, exist_ok=True)
    if _main_process() and not _owned(folder)["folder"]:
        write_json(folder / OWNED_FILE, {**_owned(folder), "folder": True})
    return folder


def guard_files(folder: str | Path, names: list[str], overwrite: bool, flag: str = "--out") -> None:
    """Stop if one of ``names`` exists in ``folder`` and Distillery did not write it."""
    folder = Path(folder)
    owned = _owned(folder)
    if owned["folder"] or overwrite:
        return
    foreign = [n for n in names if (folder / n).exists() and n not in owned["files"]]
    if foreign:
        raise ForeignFiles(f"{folder} holds {', '.join(foreign)}, which distillery did not write; pass another {flag}, "
                           "or --overwrite to replace them")


def record_files(folder: str | Path, names: list[str]) -> None:
    """Note ``names`` as written by Distillery in ``folder``'s marker."""
    folder = Path(folder)
    owned = _owned(folder)
    if not _main_process() or owned["folder"] or set(names) <= set(owned["files"]):
        return
    write_json(folder / OWNED_FILE, {**owned, "files": sorted(set(owned["files"]) | set(names))})


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> dict:
    """Name (not the machine's path), size, modification time and SHA-256 of an input file."""
    path = Path(path)
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(path)}


def same_file(old: dict, path: str | Path) -> bool:
    """Whether ``path`` still holds what ``old`` fingerprinted (size and mtime first, then the hash)."""
    stat = Path(path).stat()
    if stat.st_size != old.get("size"):
        return False
    return stat.st_mtime_ns == old.get("mtime_ns") or sha256_file(path) == old.get("sha256")


def rows_fingerprint(rows: pd.DataFrame, columns: list[str]) -> dict:
    """Row count and SHA-256 of ``columns`` of every row, in order: what a run annotates."""
    digest = hashlib.sha256()
    for values in rows[columns].astype(str).itertuples(index=False):
        digest.update("\x1f".join(values).encode("utf-8", "surrogatepass") + b"\x1e")
    return {"rows": len(rows), "sha256": digest.hexdigest()}
