"""The one exception type for a user's mistakes (bad input, flag, file or setting), and the error
policy every stage shares.

``distillery`` prints a ``UserError`` as one line (what was expected, what was found, how to
fix it); any other exception is a bug in Distillery and is shown with its full traceback, except
a full disk (:func:`full_disk`), which is the machine's, whatever library raised it. A message
shows a value through :func:`excerpt`: bounded, however large the value is.
"""

from __future__ import annotations

import errno
import reprlib

__all__ = ["UserError", "excerpt", "full_disk"]

EXCERPT = 60  # characters of a value a message shows at most
FULL_DISK_SIGNS = (
    "No space left on device",
    "os error 28",  # Rust's io::Error (safetensors, tokenizers)
    "Disk quota exceeded",
    "PytorchStreamWriter failed writing",  # torch.save reports no errno: a write that fails mid-file ...
    "unexpected pos",  # ... or, from its zip writer (inline_container.cc), the position it failed to reach
)


class UserError(ValueError):
    """A mistake the user can fix; the message says how. A ``ValueError`` for older callers."""


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _repr.maxlong = EXCERPT
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxlevel = 2


def excerpt(value, limit: int = EXCERPT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, without building the whole repr first
    (a YAML alias bomb or a 30 MB row costs nothing to show)."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def full_disk(err: BaseException | None) -> bool:
    """Whether ``err``, or an exception it was raised from, says the disk is full: an ``OSError`` with
    ``ENOSPC`` (or ``EDQUOT``), or another library's error whose message carries it (safetensors'
    ``SafetensorError``, Rust's "os error 28", pyarrow's ``ArrowIOError``, ...)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)[:2000]
        if any(sign in text for sign in FULL_DISK_SIGNS):
            return True
        err = err.__cause__ or err.__context__
    return False
