"""Typed config of the active-distillation loop (the data, teacher and student settings are annotate's
and distill's)."""

from __future__ import annotations

from dataclasses import dataclass

from distillery.active import strategies  # noqa: F401  (registers the built-in strategies)
from distillery.core.errors import UserError
from distillery.core.options import check_settings, option
from distillery.core.registry import active_strategies


@dataclass
class ActiveConfig:
    """How many teacher calls, spent how: a random seed, then rounds chosen by a strategy.

    Defaults: margin sampling, the best strategy in "Cache & Distil" (Ramírez et al. 2024)
    with query-by-committee; rounds of 100 rows; a random test sample of 200 rows, spent from
    the budget, on which every round's student is scored and the loop stops early.
    """

    budget: int = option(
        1000,
        "teacher calls in all: test rows + seed rows + every round's rows",
        ge=1,
        short="teacher calls in all",
        group="active",
        shown="common",
    )
    budget_cost: float = option(
        0.0,
        "hosted teacher: also stop cleanly (resumable) once this much is spent, in its price units (0 = no limit)",
        ge=0.0,
        short="stop once this much is spent (0 = none)",
        group="active",
    )
    strategy: str = option(
        "margin",
        "which rows go to the teacher",
        registry=active_strategies,
        short="which pool rows go to the teacher",
        group="active",
        shown="common",
        metavar="NAME",
    )
    test_rows: int = option(
        200,
        "random pool rows annotated first and held out: each round's student is scored on them, and evaluate uses them",
        ge=0,
        short="random rows held out to score rounds",
        group="active",
        shown="common",
    )
    seed_rows: int = option(
        100,
        "random rows the first student trains on",
        ge=1,
        short="rows the first student trains on",
        group="active",
        shown="common",
    )
    round_rows: int = option(
        100,
        "rows the strategy sends to the teacher each round",
        ge=1,
        short="rows sent to the teacher per round",
        group="active",
        shown="common",
    )
    patience: int = option(
        2,
        "stop when the test agreement has not improved by --min-gain for this many rounds (0 = spend the whole budget)",
        ge=0,
        short="rounds without --min-gain (0 = none)",
        group="active",
    )
    min_gain: float = option(
        0.005,
        "the agreement gain that counts as an improvement",
        ge=0.0,
        le=1.0,
        short="agreement gain that counts",
        group="active",
    )
    pool_chunk: int = option(
        2000,
        "pool rows scored at a time (memory stays flat in the pool size)",
        ge=1,
        short="pool rows scored at a time",
        group="active",
    )
    warm_start: bool = option(
        False,
        "start each round's encoder student from the previous round's instead of the base model",
        short="start from the previous round's student",
        group="active",
    )

    def __post_init__(self) -> None:
        check_settings(self)  # every field against its declared range, form and choices
        active_strategies.get(self.strategy)  # an unknown one: one line naming the registered ones
        if self.budget < self.test_rows + self.seed_rows:
            raise UserError(
                f"budget: expected at least test_rows + seed_rows = {self.test_rows + self.seed_rows}, found "
                f"{self.budget}"
            )
