"""active: spend the teacher's budget where the student is unsure (student-in-the-loop annotation)."""

from distillery.active.config import ActiveConfig
from distillery.active.loop import active
from distillery.active.strategies import STRATEGIES, Candidates, pick, scores

__all__ = ["STRATEGIES", "ActiveConfig", "Candidates", "active", "pick", "scores"]
