"""Distillery's own files in a folder (the lock, the ownership record, temporary files, a cache) are never
opened through a link or a special file someone put in their place."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from distillery.core.errors import UserError

__all__ = ["LinkedName", "check_reserved", "open_reserved", "read_reserved", "refusal"]


class LinkedName(UserError):
    """A link or a special file where Distillery keeps a file of its own (the lock, the ownership record,
    a temporary file, a cache): never followed, never opened."""


def refusal(path: Path, what: str) -> LinkedName:
    return LinkedName(
        f"{path} is {what}, where distillery keeps a file of its own; it never follows or opens one there: "
        "remove it (someone else may have put it there), then rerun"
    )


def check_reserved(path: str | Path) -> None:
    """Stop (:class:`LinkedName`) if ``path`` is a link or anything but a regular file; absent is fine."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise refusal(path, "a symbolic link")
    if not stat.S_ISREG(mode):
        raise refusal(path, "not a regular file")


def open_reserved(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of one of Distillery's own files, never through a link (``O_NOFOLLOW``) and never
    blocking on a FIFO (``O_NONBLOCK``); a link or a special file there is :class:`LinkedName`."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise refusal(path, "a symbolic link") from None
        if err.errno == errno.EISDIR:
            raise refusal(path, "a folder") from None
        if err.errno == errno.EEXIST and os.path.islink(path):
            raise refusal(path, "a symbolic link") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise refusal(path, "a folder" if stat.S_ISDIR(mode) else "not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_reserved(path: Path) -> str | None:
    """The text of one of Distillery's own files (None when absent), never through a link."""
    try:
        fd = open_reserved(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as fh:
        return fh.read()
