"""The extension points, one registry per axis: student kinds, teacher backends, calibration modes
and active strategies.

The built-in entries register themselves where they are implemented (``distillery.distill.students``,
``distillery.annotate.backends``, ``distillery.annotate.calibration``, ``distillery.active.strategies``);
a user's entry registers the same way, through the public API::

    import distillery

    @distillery.student_kinds.register("my-kind")
    class MyKind(distillery.StudentKind): ...

The command line's choices and help, and every config's validation, read the registry at the time
they run, so an entry registered before ``distillery.cli.main()`` is a choice like the built-in ones.
docs/extending.md shows one of each.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from distillery.core.errors import UserError

__all__ = ["Registry", "student_kinds", "teacher_backends", "calibration_modes", "active_strategies"]

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

    def register(self, name: str, entry: T | None = None, *, replace: bool = False):
        """Add ``entry`` under ``name``; without ``entry``, a decorator that adds what it decorates.

        A second entry under a taken name is an error unless ``replace=True``.
        """

        def add(item: T) -> T:
            if not name or not isinstance(name, str) or name != name.strip() or "," in name:
                raise ValueError(f"{self.axis} name: expected a non-empty word without commas, found {name!r}")
            if name in self._entries and not replace:
                raise ValueError(f"{self.axis} '{name}' is already registered; pass replace=True to replace it")
            self._entries[name] = item
            return item

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        """The entry named ``name``; an unknown name is a :class:`UserError` listing the known ones."""
        if name not in self._entries:
            raise UserError(
                f"{self.flag.lstrip('-').replace('-', '_')}: expected one of {', '.join(self._entries)}; found '{name}'"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy one take it out again)."""
        self._entries.pop(name, None)

    def describe(self) -> str:
        """``name: summary`` of every entry, for ``--help`` and the usage reference."""
        return "; ".join(f"{n}: {getattr(e, 'summary', '')}".rstrip(": ") for n, e in self._entries.items())


student_kinds: Registry = Registry("student kind", "--student-kind")
teacher_backends: Registry = Registry("teacher backend", "--backend")
calibration_modes: Registry = Registry("calibration mode", "--calibrate")
active_strategies: Registry = Registry("active strategy", "--strategy")
