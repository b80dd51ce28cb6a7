"""The run-directory layer every stage writes through.

- :func:`locked`: one writer per output folder. A second ``distillery`` process on the same
  folder stops at once with the pid and start time of the one that holds it; the lock dies
  with its process (``fcntl.flock``), so a kill -9 never leaves a stale lock.
- :func:`replacing`, :func:`write_text`, :func:`write_json`, :func:`write_csv`: whole-file
  writes (a temporary file in the same folder, fsync, ``os.replace``): a kill at any instant
  leaves the old file or the new one, never a torn one. Every CSV quotes every field, so a
  text with a bare carriage return, a newline, a quote or a comma reads back as one field.
- Ownership: a folder's ``.distillery-files.json`` lists, by name, the files Distillery wrote
  there, recorded once the file is whole and only while no other file has its name (so a failure
  never claims a file of someone else's). Every whole-file write
  records its file; a folder :func:`make_folder` creates empty for a library to fill (a checkpoint,
  a saved model) is Distillery's whole, and :func:`install` moves such a folder's files into place. :func:`check_folder`
  stops a stage on a folder of someone else's files
  unless ``--overwrite`` (then it writes beside them); :func:`guard_files`, the writers and
  :func:`remove_owned` never replace or delete a file that is not listed, whatever the flags.
- :func:`file_fingerprint`, :func:`same_file`, :func:`rows_fingerprint`: fingerprints of an
  input's content, so a rerun on an edited input stops instead of mixing old and new rows.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from distillery.core.errors import UserError

__all__ = [
    "RunLocked",
    "ForeignFiles",
    "locked",
    "replacing",
    "write_text",
    "write_json",
    "write_csv",
    "append_csv",
    "owned",
    "foreign",
    "temporary_name",
    "make_folder",
    "check_folder",
    "claim_folder",
    "guard_files",
    "record_files",
    "remove_owned",
    "remove_leftovers",
    "install",
    "file_fingerprint",
    "same_file",
    "rows_fingerprint",
    "sha256_file",
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
        raise RunLocked(
            f"another distillery process ({who}) is writing {shown or folder}; wait for it to finish, or "
            f"pass another {flag}"
        ) from None
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
    """A text file handle whose content replaces ``path`` whole when the block ends without error.

    The file is then recorded as Distillery's in its folder's marker. A file already at ``path``
    that Distillery did not write is never replaced: :class:`ForeignFiles` names it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not _ours(path.name) and path.name not in owned(path.parent)
    if new and (path.exists() or path.is_symlink()):
        raise ForeignFiles(
            f"{path} exists and distillery did not write it; it is never replaced: move it away, or write elsewhere"
        )
    tmp = path.with_name(temporary_name(path.name))
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if new:  # recorded while no file has the name: a kill after this claims nothing of anyone else's
            record_files(path.parent, [path.name])
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


def owned(folder: str | Path) -> set[str]:
    """The names of the files in ``folder`` that Distillery wrote (its ``.distillery-files.json``).

    A marker that does not parse claims nothing, and so does an older marker's ``"folder": true``:
    only files listed by name are Distillery's, and every file of a folder :func:`make_folder` made.
    """
    marker = Path(folder) / OWNED_FILE
    if not marker.is_file():
        return set()
    try:
        record = json.loads(marker.read_text())
        files = record.get("files", [])
    except (ValueError, AttributeError):
        return set()
    if _made(record):  # made empty by make_folder: all of it is Distillery's
        return {p.name for p in Path(folder).iterdir() if not _ours(p.name)}
    return {str(name) for name in files if isinstance(name, str)} if isinstance(files, list) else set()


def _made(record) -> bool:
    return isinstance(record, dict) and record.get("made") is True


def made(folder: str | Path) -> bool:
    """Whether :func:`make_folder` made ``folder`` (then everything under it is Distillery's)."""
    try:
        return _made(json.loads((Path(folder) / OWNED_FILE).read_text()))
    except (OSError, ValueError):
        return False


def make_folder(path: str | Path) -> Path:
    """Create ``path`` empty (it must not exist), marked as made by Distillery: every file a library
    writes into it (a checkpoint, a saved model) is Distillery's without being listed."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(errno.EEXIST, "File exists", str(path))
    # Made under a temporary name, marker included, then renamed into place: a kill at any instant
    # leaves either nothing at ``path`` or a folder marked as Distillery's (never an unmarked one that
    # no later run may remove); the temporary folder is a leftover that remove_leftovers() clears.
    staging = path.with_name(temporary_name(path.name))
    shutil.rmtree(staging, ignore_errors=True)  # ours, by its name
    staging.mkdir(parents=True)
    with replacing(staging / OWNED_FILE) as fh:
        fh.write(json.dumps({"files": [], "made": True}) + "\n")
    staging.rename(path)
    return path


def record_files(folder: str | Path, names: list[str]) -> None:
    """Note ``names`` (files now in ``folder``) as written by Distillery in ``folder``'s marker.

    Call it after the files are written (or, for one file, while nothing has its name): a stage
    that fails before then claims nothing of anyone else's.
    """
    folder = Path(folder)
    mine = owned(folder)
    if not _main_process() or set(names) <= mine or made(folder):  # every file of a made folder is its own
        return
    with replacing(folder / OWNED_FILE) as fh:
        fh.write(json.dumps({"files": sorted(mine | set(names))}, indent=2) + "\n")


def temporary_name(name: str) -> str:
    """The name of a temporary file or folder for ``name`` (``.NAME.distillery-tmpPID``): a write in
    progress, a folder being staged or removed. Only names of this form are removed unlisted."""
    return f".{name}.distillery-tmp{os.getpid()}"


def _temporary(name: str) -> bool:
    return re.fullmatch(r"\..+\.distillery-tmp\d+", name) is not None


def _ours(name: str) -> bool:
    """The lock, the marker, and the temporary files of whole-file writes."""
    return name.startswith(".distillery") or _temporary(name)


def foreign(path: str | Path) -> list[str]:
    """What Distillery did not write at ``path``: the file itself, or the files under a folder (relative paths)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        return [] if path.name in owned(path.parent) else [path.name]
    if not path.is_dir() or made(path):
        return []
    found, mine = [], owned(path)
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if _ours(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            found += [f"{entry.name}/{name}" for name in foreign(entry)]
        elif entry.name not in mine:
            found.append(entry.name)
    return found


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_folder(folder: str | Path, overwrite: bool, flag: str = "--out") -> None:
    """Stop if ``folder`` holds files of someone else's (and ``overwrite`` is not given), naming them.

    ``overwrite`` lets a stage write beside them; it never lets one replace or delete them.
    """
    folder = Path(folder)
    if folder.is_dir() and not overwrite and _main_process():
        others = foreign(folder)
        if others:
            raise ForeignFiles(
                f"{folder} holds files distillery did not write ({_listed(others)}); pass another {flag}, "
                "or --overwrite to write beside them (they are never replaced or deleted)"
            )


def claim_folder(folder: str | Path, overwrite: bool, flag: str = "--out") -> Path:
    """The folder a stage writes: new, holding only Distillery's files, or ``overwrite`` given (see
    :func:`check_folder`)."""
    folder = Path(folder)
    check_folder(folder, overwrite, flag)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def guard_files(folder: str | Path, names: list[str], flag: str = "--out") -> None:
    """Stop if one of ``names`` (files or folders in ``folder``) holds something Distillery did not write.

    ``--overwrite`` does not change this: a user's file is never replaced or deleted.
    """
    folder = Path(folder)
    found = [f"{name}/{sub}" if sub != name else name for name in names for sub in foreign(folder / name)]
    if found and _main_process():
        raise ForeignFiles(
            f"{folder} holds {_listed(found)}, which distillery did not write and will not replace; "
            f"move {'them' if len(found) > 1 else 'it'} away, or pass another {flag}"
        )


def remove_owned(path: str | Path) -> None:
    """Delete what Distillery wrote at ``path`` (a file, or every recorded file under a folder, and the
    folders left empty); a file it did not write, and the folders that hold one, stay."""
    path = Path(path)
    if not _main_process() or not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        mine = owned(path.parent)
        if path.name in mine:
            path.unlink()
            if not made(path.parent):  # the record lists what is there
                with replacing(path.parent / OWNED_FILE) as fh:
                    fh.write(json.dumps({"files": sorted(mine - {path.name})}, indent=2) + "\n")
        return
    if made(path):  # renamed to a temporary name first: a kill mid-way leaves a leftover, never foreign files
        trash = path.with_name(temporary_name(path.name))
        path.rename(trash)
        shutil.rmtree(trash)
        return
    mine, recorded = owned(path), (path / OWNED_FILE).is_file()
    for entry in list(path.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            remove_owned(entry)
        elif entry.name in mine or _temporary(entry.name):
            entry.unlink()
    if not recorded:  # a folder distillery never wrote in stays, empty or not, with no record put in it
        return
    left = [p for p in path.iterdir() if p.name not in (OWNED_FILE, LOCK_FILE)]
    if not left:
        for name in (OWNED_FILE, LOCK_FILE):
            (path / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.rmdir()
    else:
        with replacing(path / OWNED_FILE) as fh:
            fh.write(json.dumps({"files": sorted(mine & {p.name for p in left})}, indent=2) + "\n")


def remove_leftovers(folder: str | Path) -> None:
    """Remove the temporary files and folders (:func:`temporary_name`) that killed runs left in ``folder``
    (call it holding the folder's lock: no other run is writing there)."""
    folder = Path(folder)
    if not folder.is_dir() or not _main_process():
        return
    for entry in folder.iterdir():
        if _temporary(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def install(source: str | Path, target: str | Path, last: tuple[str, ...] = ()) -> None:
    """Move the files of ``source`` (a folder this run filled) into ``target``, recorded as Distillery's;
    a file of someone else's in ``target`` with the same name stops it first (nothing is moved).
    The top-level files named in ``last`` go last (the record whose presence marks a whole student)."""
    source, target = Path(source), Path(target)
    clash = [
        str(p.relative_to(source))
        for p in source.rglob("*")
        if p.is_file() and not _ours(p.name) and foreign(target / p.relative_to(source))
    ]
    if clash:
        raise ForeignFiles(
            f"{target} holds {_listed(clash)}, which distillery did not write and will not replace; "
            "move it away, or pass another folder"
        )
    for here, _, files in os.walk(source):
        dest = target / Path(here).relative_to(source)
        dest.mkdir(parents=True, exist_ok=True)
        names = [f for f in files if not _ours(f) and not (dest == target and f in last)]
        record_files(dest, [n for n in names if not (dest / n).exists()])  # while nothing has their names
        for name in names:
            os.replace(Path(here) / name, dest / name)
    for name in last:
        if (source / name).is_file():
            record_files(target, [name])
            os.replace(source / name, target / name)
    shutil.rmtree(source, ignore_errors=True)


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
