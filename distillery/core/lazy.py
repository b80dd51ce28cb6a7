"""Stage packages that import nothing heavy until a name is used.

``distillery.annotate`` is a package and, in the public API, a function: :func:`lazy_package` makes
the package callable, so ``distillery.annotate(cfg)`` runs the stage whichever of the two Python
bound to the name (importing a submodule binds the package over any function of that name). Its
exported names are looked up in their modules on first use (PEP 562), so ``from
distillery.annotate.config import AnnotateConfig`` imports the config alone: the command line builds
its parser and prints ``--help`` without torch.
"""

from __future__ import annotations

import importlib
import sys
import types

__all__ = ["lazy_package"]


def lazy_package(name: str, exports: dict[str, str], call: str | None = None) -> None:
    """Give the package ``name`` its ``exports`` (exported name -> the module that defines it), each
    imported the first time it is read; ``call`` (an exported name) is what calling the package runs."""
    package = sys.modules[name]

    def __getattr__(attr: str):
        if attr not in exports:
            raise AttributeError(f"module '{name}' has no attribute '{attr}'")
        value = getattr(importlib.import_module(exports[attr]), attr)
        setattr(package, attr, value)  # the next lookup is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*package.__dict__, *exports})

    package.__getattr__, package.__dir__ = __getattr__, __dir__
    package.__all__ = sorted(exports)

    def __getattribute__(self, attr: str):
        value = types.ModuleType.__getattribute__(self, attr)
        # ``evaluate`` exported from the submodule ``evaluate``: importing that submodule binds the package's
        # name to the module; the exported function is what the name stands for
        if isinstance(value, types.ModuleType) and exports.get(attr) == value.__name__ == f"{name}.{attr}":
            return getattr(value, attr)
        return value

    members: dict = {"__getattribute__": __getattribute__}
    if call is not None:
        members["__call__"] = lambda self, *args, **kwargs: getattr(self, call)(*args, **kwargs)
        # help() and inspect.signature() show the stage function's
        members["__wrapped__"] = property(lambda self: getattr(self, call))
    package.__class__ = type("LazyPackage", (types.ModuleType,), members)
