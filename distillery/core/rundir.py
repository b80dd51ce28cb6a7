"""The run-directory layer every stage writes through.

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

One writer per folder is :mod:`distillery.core.lock`; a file of Distillery's own never opened through a link,
:mod:`distillery.core.reserved`; fingerprints of an input's content, :mod:`distillery.core.fingerprints`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fnmatch
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from distillery.core.errors import UserError
from distillery.core.lock import LOCK_FILE, main_process
from distillery.core.reserved import check_reserved, open_reserved, read_reserved, refusal

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ForeignFiles",
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
    "seal_folder",
    "mark_made",
    "remove_leftovers_named",
]

OWNED_FILE = ".distillery-files.json"


class ForeignFiles(UserError):
    """A stage would write over files that Distillery did not write."""


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | Path, binary: bool = False) -> Iterator:
    """A text (or ``binary``) file handle whose content replaces ``path`` whole when the block ends
    without error.

    The file is then recorded as Distillery's in its folder's marker: only once it is whole, so a
    stage that fails or is refused claims nothing. A file already at ``path`` that Distillery did not
    write is never replaced: :class:`ForeignFiles` names it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not _ours(path.name) and path.name not in owned(path.parent)
    if new and (path.exists() or path.is_symlink()):
        raise ForeignFiles(
            f"{path} exists and distillery did not write it; it is never replaced: move it away, or write elsewhere"
        )
    tmp = path.with_name(temporary_name(path.name))
    check_reserved(tmp)
    tmp.unlink(missing_ok=True)  # a regular file by our temporary name: a killed run's (same pid)
    try:
        fd = open_reserved(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if new:  # recorded while no file has the name: a kill after this claims nothing of anyone else's
            record_files(path.parent, [path.name])
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        if not os.path.islink(tmp):
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    record = _record(folder)
    files = record.get("files", [])
    if _made(record):  # made by make_folder and not sealed yet: what the library it was made for writes
        return {p.name for p in Path(folder).iterdir() if not _ours(p.name) and _expected(record, p.name)}
    return {str(name) for name in files if isinstance(name, str)} if isinstance(files, list) else set()


def _record(folder: str | Path) -> dict:
    """``folder``'s ownership record ({} when absent or unreadable), never read through a link."""
    try:
        text = read_reserved(Path(folder) / OWNED_FILE)
    except NotADirectoryError:
        return {}
    try:
        record = json.loads(text) if text is not None else {}
    except ValueError:  # a torn or edited record claims nothing
        return {}
    return record if isinstance(record, dict) else {}


def _made(record) -> bool:
    return isinstance(record, dict) and record.get("made") is True


def _expected(record: dict, name: str) -> bool:
    """Whether an unsealed made folder's library writes ``name`` (its ``expect`` patterns; none: anything)."""
    patterns = record.get("expect")
    return not isinstance(patterns, list) or any(fnmatch.fnmatchcase(name, str(p)) for p in patterns)


def made(folder: str | Path) -> bool:
    """Whether :func:`make_folder` made ``folder`` and it is not sealed yet (then everything under it is
    Distillery's: the partial output of a write that never finished)."""
    return _made(_record(folder))


def make_folder(path: str | Path, expect: tuple[str, ...] | None = None) -> Path:
    """Create ``path`` empty (it must not exist), marked as made by Distillery: until :func:`seal_folder`
    lists what a library wrote into it (a checkpoint, a saved model), what it holds is Distillery's: every
    file, or with ``expect`` (glob patterns of what the library writes) only the files that match, so a
    file a user saves there after a kill is theirs."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(errno.EEXIST, "File exists", str(path))
    # Made under a temporary name, marker included, then renamed into place: a kill at any instant
    # leaves either nothing at ``path`` or a folder marked as Distillery's (never an unmarked one that
    # no later run may remove); the temporary folder is a leftover that remove_leftovers() clears.
    staging = path.with_name(temporary_name(path.name))
    remove_leftovers_named(staging)
    staging.mkdir(parents=True)
    mark_made(staging, expect)
    staging.rename(path)
    return path


def mark_made(folder: str | Path, expect: tuple[str, ...] | None = None) -> None:
    """Record an empty ``folder`` as made by Distillery (see :func:`make_folder`)."""
    record = {"files": [], "made": True, **({"expect": list(expect)} if expect else {})}
    with replacing(Path(folder) / OWNED_FILE) as fh:
        fh.write(json.dumps(record) + "\n")


def seal_folder(path: str | Path) -> None:
    """Mark a folder :func:`make_folder` made as complete: each of its folders lists the files in it
    now, and from then on only those are Distillery's (a file a user saves there later stays theirs)."""
    path = Path(path)
    for here, _, files in os.walk(path):
        names = sorted(f for f in files if not _ours(f))
        with replacing(Path(here) / OWNED_FILE) as fh:
            fh.write(json.dumps({"files": names}, indent=2) + "\n")


def record_files(folder: str | Path, names: list[str]) -> None:
    """Note ``names`` (files now in ``folder``) as written by Distillery in ``folder``'s marker.

    Call it after the files are written (or, for one file, while nothing has its name): a stage
    that fails before then claims nothing of anyone else's.
    """
    folder = Path(folder)
    mine = owned(folder)
    if not main_process() or set(names) <= mine or made(folder):  # every file of a made folder is its own
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
    if not path.is_dir():
        return []
    record = _record(path)
    if _made(record):  # unsealed: what its library does not write (with nothing expected, none)
        return sorted(p.name for p in path.iterdir() if not _ours(p.name) and not _expected(record, p.name))
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
    if folder.is_dir() and not overwrite and main_process():
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
    if found and main_process():
        raise ForeignFiles(
            f"{folder} holds {_listed(found)}, which distillery did not write and will not replace; "
            f"move {'them' if len(found) > 1 else 'it'} away, or pass another {flag}"
        )


def remove_owned(path: str | Path) -> None:
    """Delete what Distillery wrote at ``path`` (a file, or every recorded file under a folder, and the
    folders left empty); a file it did not write, and the folders that hold one, stay."""
    path = Path(path)
    if not main_process() or not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        mine = owned(path.parent)
        if path.name in mine:
            path.unlink()
            if not made(path.parent):  # the record lists what is there
                with replacing(path.parent / OWNED_FILE) as fh:
                    fh.write(json.dumps({"files": sorted(mine - {path.name})}, indent=2) + "\n")
        return
    if made(path) and foreign(path):  # a user's file in a folder a kill left unsealed: only the library's go
        for name in owned(path):
            entry = path / name
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
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


def remove_leftovers_named(path: Path) -> None:
    """Clear what a killed run left at the temporary name ``path``: a temporary file, an empty folder or a
    folder Distillery made (its record lists nothing else). A link, a special file or a folder holding a
    file Distillery did not write stops the stage in one line (:class:`LinkedName`); nothing is deleted."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        check_reserved(path)  # a link or a special file: one line
        path.unlink()
    elif all(_ours(p.name) and not p.is_dir() for p in path.iterdir()) or (
        (path / OWNED_FILE).is_file() and not foreign(path)
    ):  # only our temporary files (killed before its record), or a staged folder whose record covers all of it
        shutil.rmtree(path)
    else:
        raise refusal(path, "a folder holding files distillery did not write")


def remove_leftovers(folder: str | Path) -> None:
    """Remove the temporary files and folders (:func:`temporary_name`) that killed runs left in ``folder``
    (call it holding the folder's lock: no other run is writing there); see :func:`remove_leftovers_named`."""
    folder = Path(folder)
    if not folder.is_dir() or not main_process():
        return
    for entry in folder.iterdir():
        if _temporary(entry.name):
            remove_leftovers_named(entry)


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
