"""active: spend the teacher's budget where the student is unsure (student-in-the-loop annotation)."""

from active.config import ActiveConfig
from active.loop import active
from active.strategies import STRATEGIES, Candidates, pick, scores

__all__ = ["STRATEGIES", "ActiveConfig", "Candidates", "active", "pick", "scores"]
