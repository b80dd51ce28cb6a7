"""active: spend the teacher's budget where the student is unsure (student-in-the-loop annotation).

``distillery.active(cfg)`` runs the loop; the names below are imported on first use."""

from distillery.core.lazy import lazy_package

lazy_package(
    __name__,
    {
        "ActiveConfig": "distillery.active.config",
        "active": "distillery.active.loop",
        **dict.fromkeys(("STRATEGIES", "Candidates", "Strategy", "pick", "scores"), "distillery.active.strategies"),
    },
    call="active",
)
