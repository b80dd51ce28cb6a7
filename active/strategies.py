"""Which pool rows go to the teacher next: scores from the student's probabilities (and embeddings).

Each strategy ranks rows; a higher score means "ask the teacher about this row first". The
candidates of a large pool are kept in a bounded heap while it is scored chunk by chunk
(:class:`Candidates`), so memory does not grow with the pool.
"""

from __future__ import annotations

import heapq

import numpy as np
from distillery.core.errors import UserError

__all__ = ["STRATEGIES", "scores", "Candidates", "pick"]

STRATEGIES = ("random", "margin", "entropy", "diverse")
DIVERSE_POOL = 10  # diverse: cluster the 10·k most uncertain rows into k clusters (Zhdanov 2019)


def scores(strategy: str, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Priority of each row (higher = ask first).

    random: a uniform draw. margin: minus the gap between the two most likely labels
    (smallest margin first). entropy: the entropy of the student's distribution. diverse ranks
    its candidates by margin too, then spreads its batch over clusters (:func:`pick`).
    """
    if strategy == "random":
        return rng.random(len(probs))
    if strategy in ("margin", "diverse"):
        top2 = np.sort(probs, axis=1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])
    if strategy == "entropy":
        return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(1)
    raise UserError(f"strategy: expected one of {STRATEGIES}, found '{strategy}'")


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
    """``k`` rows ``(id, score)`` to annotate next.

    diverse: k-means (k clusters) on the student's embeddings of the 10·k smallest-margin
    candidates, then the smallest-margin row of each cluster, so one batch does not spend its
    budget on near-duplicates ("Diverse mini-batch Active Learning", Zhdanov 2019).
    """
    best = candidates.best()
    if strategy != "diverse" or len(best) <= k:
        return [(row_id, score) for score, _, row_id, _ in best[:k]]
    from sklearn.cluster import KMeans

    emb = np.stack([item[3] for item in best])
    clusters = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(emb)
    chosen = {}
    for (score, _, row_id, _), c in zip(best, clusters):  # best is sorted: the first row of a cluster is its most uncertain
        chosen.setdefault(int(c), (row_id, score))
    return list(chosen.values())
