"""One writer per output folder. A second ``distillery`` process on the same folder stops at once with the
pid and start time of the one that holds it; the lock dies with its process (``fcntl.flock``), so a kill -9
never leaves a stale lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from distillery.core.errors import UserError
from distillery.core.reserved import open_reserved

__all__ = ["LOCK_FILE", "RunLocked", "locked", "main_process"]

LOCK_FILE = ".distillery.lock"
_held: dict[str, list] = {}  # folder -> [open lock file, depth]: a process may re-enter its own lock (run -> annotate)


class RunLocked(UserError):
    """Another distillery process is writing the same folder."""


def main_process() -> bool:
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
    if key in _held or not main_process():
        if key in _held:
            _held[key][1] += 1
        try:
            yield folder
        finally:
            if key in _held:
                _held[key][1] -= 1
        return
    fh = os.fdopen(open_reserved(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT), "a+", encoding="utf-8")
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
