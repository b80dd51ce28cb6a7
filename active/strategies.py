"""Which pool rows go to the teacher next: scores from the student's probabilities (and embeddings).

Each strategy ranks rows; a higher score means "ask the teacher about this row first". The
candidates of a large pool are kept in a bounded heap while it is scored chunk by chunk
(:class:`Candidates`), so memory does not grow with the pool.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distillery.core.registry import active_strategies

__all__ = ["Strategy", "STRATEGIES", "scores", "Candidates", "pick"]


@dataclass(frozen=True)
class Strategy:
    """One active strategy, registered in ``active_strategies`` (``distillery.core.registry``).

    Args:
        summary: one line for --help.
        score: ``(probs (rows, labels), rng) -> (rows,)`` priorities: a higher score is asked first.
        needs_embeddings: the loop also computes the student's mean-pooled embeddings of the pool.
        pool_factor: candidates kept per row to pick (``choose`` picks among them).
        choose: ``(candidates best first [(score, order, id, embedding)], k, seed) -> [(id, score)]``;
            None takes the k best.
        class_aware: ``score`` also takes ``shares``, each label's share of the rows the teacher has
            labelled so far (``(labels,)``), as a third argument.
    """

    summary: str
    score: Callable[..., np.ndarray]
    needs_embeddings: bool = False
    pool_factor: int = 1
    choose: Callable[[list, int, int], list] | None = None
    class_aware: bool = False


DIVERSE_POOL = 10  # diverse: cluster the 10·k most uncertain rows into k clusters (Zhdanov 2019)


def _margin(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    top2 = np.sort(probs, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def _entropy(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(1)


RARE_WEIGHT_CAP = 20.0  # rare: a class's weight is at most this (a class with no row yet)


def _rare(probs: np.ndarray, rng: np.random.Generator, shares: np.ndarray | None) -> np.ndarray:
    """Class-aware: the expected weight of the row's label under the student, a label's weight
    ``1 / (labels x its share)`` of the teacher's labels so far (at most RARE_WEIGHT_CAP). A row the student
    thinks is of an under-represented class scores high, and so does one it is unsure of between such a
    class and another; ties go to the smaller margin."""
    n_labels = probs.shape[1]
    shares = np.full(n_labels, 1 / n_labels) if shares is None else np.asarray(shares, dtype=float)
    weights = np.minimum(1.0 / (n_labels * np.maximum(shares, 1e-9)), RARE_WEIGHT_CAP)
    return probs @ weights + 1e-3 * _margin(probs, rng)


def _diverse(best: list, k: int, seed: int) -> list[tuple[str, float]]:
    """k-means (k clusters) on the student's embeddings of the candidates, then the smallest-margin
    row of each cluster, so one batch does not spend its budget on near-duplicates ("Diverse
    mini-batch Active Learning", Zhdanov 2019)."""
    from sklearn.cluster import KMeans

    emb = np.stack([item[3] for item in best])
    clusters = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(emb)
    chosen = {}
    for (score, _, row_id, _), c in zip(
        best, clusters
    ):  # best is sorted: the first row of a cluster is its most uncertain
        chosen.setdefault(int(c), (row_id, score))
    return list(chosen.values())


active_strategies.register("random", Strategy("a uniform draw", lambda probs, rng: rng.random(len(probs))))
active_strategies.register("margin", Strategy("smallest gap between the two most likely labels", _margin))
active_strategies.register("entropy", Strategy("highest entropy of the student's distribution", _entropy))
active_strategies.register(
    "diverse",
    Strategy(
        "margin within k-means clusters of the student's embeddings",
        _margin,
        needs_embeddings=True,
        pool_factor=DIVERSE_POOL,
        choose=_diverse,
    ),
)
active_strategies.register(
    "rare",
    Strategy(
        "rows the student thinks are of a class the teacher has labelled few of, or unsure between one and another",
        _rare,
        class_aware=True,
    ),
)
STRATEGIES = ("random", "margin", "entropy", "diverse", "rare")  # the built-in ones (read at import: no plugin loading)


def scores(strategy: str, probs: np.ndarray, rng: np.random.Generator, shares: np.ndarray | None = None) -> np.ndarray:
    """Priority of each row under a registered strategy (higher = ask first); ``shares``: each label's share
    of the teacher's labels so far, for a class-aware strategy (None: equal)."""
    entry = active_strategies.get(strategy)
    return entry.score(probs, rng, shares) if entry.class_aware else entry.score(probs, rng)


class Candidates:
    """The ``size`` highest-scoring rows seen so far, with their embeddings when kept."""

    def __init__(self, size: int):
        self.size, self.heap, self.count = size, [], 0

    def add(self, ids: list[str], row_scores: np.ndarray, embeddings: np.ndarray | None = None) -> None:
        for i, (row_id, score) in enumerate(zip(ids, row_scores)):
            item = (float(score), self.count, row_id, None if embeddings is None else embeddings[i])
            self.count += 1  # ties keep pool order
            if len(self.heap) < self.size:
                heapq.heappush(self.heap, item)
            elif item[0] > self.heap[0][0]:
                heapq.heapreplace(self.heap, item)

    def best(self) -> list[tuple]:
        """``(score, order, id, embedding)``, highest score first."""
        return sorted(self.heap, key=lambda item: (-item[0], item[1]))


def pick(strategy: str, candidates: Candidates, k: int, seed: int) -> list[tuple[str, float]]:
    """``k`` rows ``(id, score)`` to annotate next: the strategy's ``choose`` among the candidates, else the k best."""
    best, entry = candidates.best(), active_strategies.get(strategy)
    if entry.choose is None or len(best) <= k:
        return [(row_id, score) for score, _, row_id, _ in best[:k]]
    return entry.choose(best, k, seed)
