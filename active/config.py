"""Typed config of the active-distillation loop (the data, teacher and student settings are annotate's and distill's)."""

from __future__ import annotations

from dataclasses import dataclass

from distillery.active import strategies  # noqa: F401  (registers the built-in strategies)
from distillery.core.registry import active_strategies
from distillery.core.options import check_finite, option
from distillery.core.errors import UserError


@dataclass
class ActiveConfig:
    """How many teacher calls, spent how: a random seed, then rounds chosen by a strategy.

    Defaults: margin sampling, the best strategy in "Cache & Distil" (Ramírez et al. 2024)
    with query-by-committee; rounds of 100 rows; a random test sample of 200 rows, spent from
    the budget, on which every round's student is scored and the loop stops early.
    """

    budget: int = option(1000, "teacher calls in all: test rows + seed rows + every round's rows")
    budget_cost: float = option(0.0, "hosted teacher: also stop cleanly (resumable) once this much is spent, in its price units (0 = no limit)")
    strategy: str = option("margin", "which rows go to the teacher", registry=active_strategies)
    test_rows: int = option(200, "random pool rows annotated first and held out: each round's student is scored on them, and evaluate uses them")
    seed_rows: int = option(100, "random rows the first student trains on")
    round_rows: int = option(100, "rows the strategy sends to the teacher each round")
    patience: int = option(2, "stop when the test agreement has not improved by --min-gain for this many rounds (0 = spend the whole budget)")
    min_gain: float = option(0.005, "the agreement gain that counts as an improvement")
    pool_chunk: int = option(2000, "pool rows scored at a time (memory stays flat in the pool size)")
    warm_start: bool = option(False, "start each round's encoder student from the previous round's instead of the base model")

    def __post_init__(self) -> None:
        check_finite(self)
        active_strategies.get(self.strategy)  # an unknown one: one line naming the registered ones
        for name in ("seed_rows", "round_rows", "pool_chunk"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: expected >= 1, found {getattr(self, name)}")
        if self.test_rows < 0 or self.patience < 0:
            raise UserError(f"test_rows, patience: expected >= 0, found {self.test_rows}, {self.patience}")
        if self.budget < self.test_rows + self.seed_rows:
            raise UserError(f"budget: expected at least test_rows + seed_rows = {self.test_rows + self.seed_rows}, found {self.budget}")
