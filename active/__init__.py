"""active: spend the teacher's budget where the student is unsure (student-in-the-loop annotation)."""

from distillery.active.config import ActiveConfig
from distillery.active.loop import active
from distillery.active.strategies import STRATEGIES, Candidates, Strategy, pick, scores

__all__ = ["STRATEGIES", "Strategy", "ActiveConfig", "Candidates", "active", "pick", "scores"]

from distillery.core.callable_module import callable_module  # noqa: E402

callable_module(__name__, active)  # distillery.active(...) runs the loop
