"""``distillery.annotate`` is a package and, in the public API, a function: the package is made
callable, so ``distillery.annotate(cfg)`` runs the stage whichever of the two Python bound to the
name (importing a submodule binds the package over any function of that name)."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

__all__ = ["callable_module"]


def callable_module(name: str, function: Callable) -> None:
    """Make the module ``name`` call ``function`` when called (its docstring and signature shown by help())."""

    class _Stage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    _Stage.__call__.__doc__ = function.__doc__
    _Stage.__call__.__wrapped__ = function
    sys.modules[name].__class__ = _Stage
