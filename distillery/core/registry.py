"""The extension points, one registry per axis: student kinds, teacher backends, calibration modes
and active strategies.

Every entry, built-in or not, comes from a plugin: a package that declares an entry point in the
``distillery.plugins`` group. Distillery's own (pyproject.toml) is ``distillery.builtins``, which
imports the modules where the built-in entries are implemented; ``pip install distillery-foo``
adds foo's the same way. The plugins are loaded the first time any registry is read, so a
registry is filled without a stage importing another to make it register, and the command line's
choices, its ``--help``, every config's validation and docs/usage.md's generator see a plugin's
entries like the built-in ones. An entry registered in a script, before the registry is read,
counts too::

    import distillery

    @distillery.student_kinds.register("my-kind")
    class MyKind(distillery.StudentKind): ...

docs/extending.md shows one of each, and a plugin package.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from distillery.core.errors import UserError

__all__ = [
    "Registry",
    "student_kinds",
    "teacher_backends",
    "calibration_modes",
    "active_strategies",
    "load_plugins",
    "plugin_in_traceback",
]

PLUGIN_GROUP = "distillery.plugins"
BUILTINS = "distillery.builtins"  # Distillery's own plugin (loaded by name too when the package is not installed)
_plugins: dict[str, str] = {}  # entry point name -> the distribution that declared it; filled once
_plugin_modules: dict[str, str] = {}  # top-level module of a plugin package's entry point -> its distribution

T = TypeVar("T")


class Registry(Generic[T]):
    """Named implementations of one extension point.

    Args:
        axis: what the entries are, for messages ("student kind").
        flag: the setting that names one ("--student-kind").
    """

    def __init__(self, axis: str, flag: str):
        self.axis, self.flag = axis, flag
        self._entries: dict[str, T] = {}
        self._origin: dict[str, str] = {}  # entry name -> the plugin distribution that registered it

    def register(self, name: str, entry: T | None = None, *, replace: bool = False):
        """Add ``entry`` under ``name``; without ``entry``, a decorator that adds what it decorates.

        A second entry under a taken name is an error unless ``replace=True``.
        """

        def add(item: T) -> T:
            if not name or not isinstance(name, str) or name != name.strip() or "," in name:
                raise ValueError(f"{self.axis} name: expected a non-empty word without commas, found {name!r}")
            if name in self._entries and not replace:
                by = self._origin.get(name) or "a script"
                hint = "; two plugins cannot give one name" if _loading else "; pass replace=True to replace it"
                raise ValueError(f"{self.axis} '{name}' is already registered (by {by}){hint}")
            self._entries[name] = item
            if _loading:
                self._origin[name] = _loading[-1]
            return item

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        """The entry named ``name``; an unknown name is a :class:`UserError` listing the known ones."""
        load_plugins()
        if name not in self._entries:
            raise UserError(
                f"{self.flag.lstrip('-').replace('-', '_')}: expected one of {', '.join(self._entries)}; found '{name}'"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        load_plugins()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def origin(self, name: str) -> str:
        """The distribution whose plugin registered ``name`` ("distillery" for a built-in; "" when a script did)."""
        load_plugins()
        return self._origin.get(name, "")

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy one take it out again)."""
        self._entries.pop(name, None)

    def describe(self) -> str:
        """``name: summary`` of every entry, for ``--help`` and the usage reference."""
        load_plugins()
        return "; ".join(f"{n}: {getattr(e, 'summary', '')}".rstrip(": ") for n, e in self._entries.items())


student_kinds: Registry = Registry("student kind", "--student-kind")
teacher_backends: Registry = Registry("teacher backend", "--backend")
calibration_modes: Registry = Registry("calibration mode", "--calibrate")
active_strategies: Registry = Registry("active strategy", "--strategy")


_loading: list[str] = []  # the distribution whose plugin is being loaded (entries record it as their origin)
_loaded = False


def load_plugins() -> None:
    """Load every ``distillery.plugins`` entry point once: Distillery's own first, then the installed
    packages' in name order. An entry point names a module (importing it registers its entries) or a
    function (called with no arguments). A plugin that fails to load is a one-line :class:`UserError`
    naming it and its package."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    found = sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: (ep.value != BUILTINS, ep.name))
    if not any(ep.value == BUILTINS for ep in found):
        _load("distillery", "distillery", lambda: importlib.import_module(BUILTINS))
    for ep in found:
        dist = ep.dist.name if ep.dist is not None else ep.name
        if ep.value != BUILTINS:
            _plugin_modules[ep.value.split(":")[0].split(".")[0]] = dist
        _load(ep.name, dist, ep.load)


def _load(name: str, dist: str, load) -> None:
    _loading.append(dist)
    try:
        loaded = load()
        if callable(loaded) and not isinstance(loaded, type(importlib)):
            loaded()
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # SystemExit too: a plugin never ends the command, with 0 or otherwise
        # a broken plugin: one line naming it, not a traceback from inside it
        message = str(err).splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(
            f"plugin '{name}' (package {dist}) failed to load: {type(err).__name__}: {message}; "
            f"reinstall it, or uninstall it (pip uninstall {dist})"
        ) from err
    finally:
        _loading.pop()
        _plugins[name] = dist


def plugin_in_traceback(tb) -> str | None:
    """The plugin package whose code raised, when the innermost frame of a plugin's module is in ``tb``."""
    found = None
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        found = _plugin_modules.get(module, found)
        tb = tb.tb_next
    return found
