"""The one exception type for a user's mistakes (bad input, flag, file or setting).

``distillery`` prints a ``UserError`` as one line (what was expected, what was found, how to
fix it); any other exception is a bug in Distillery and is shown with its full traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A mistake the user can fix; the message says how. A ``ValueError`` for older callers."""
