"""Active distillation: the strategies on probabilities with a known answer, the bounded
candidate heap, and the loop end to end on tiny models (budget stop, resume mid-round)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_rows

from distillery import cli as distillery_cli
from distillery.active import ActiveConfig, Candidates, pick, scores
from distillery.active.loop import _stop_reason


def _top(strategy, probs, k, emb=None, seed=0, shares=None):
    cands = Candidates(k * 10 if strategy == "diverse" else k)
    cands.add([str(i) for i in range(len(probs))], scores(strategy, probs, np.random.default_rng(seed), shares), emb)
    return [int(i) for i, _ in pick(strategy, cands, k, seed)]


def test_margin_and_entropy_pick_the_rows_the_student_is_least_sure_of():
    probs = np.array([[0.9, 0.05, 0.05], [0.45, 0.44, 0.11], [0.34, 0.33, 0.33], [0.6, 0.2, 0.2], [0.5, 0.5, 0.0]])
    assert _top("margin", probs, 2) == [4, 2]  # top-2 gaps 0.85, 0.01, 0.01, 0.4, 0.0: ties keep pool order
    assert _top("entropy", probs, 2) == [2, 1]  # the most uniform rows
    picks = [_top("random", np.full((1000, 2), 0.5), 100, seed=s) for s in (0, 1)]
    assert picks[0] != picks[1] and 350 < np.mean(picks[0]) < 650  # seeded, spread over the pool
    with pytest.raises(ValueError, match="strategy"):
        scores("greedy", probs, np.random.default_rng(0))


def test_diverse_spreads_a_batch_over_clusters_where_margin_takes_near_duplicates():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    emb = np.concatenate(
        [c + rng.normal(0, 0.1, (10, 3)) for c in centres]
    )  # 3 clusters of 10 rows: the 10·k candidates
    p = np.concatenate([rng.uniform(0.50, 0.52, 10), rng.uniform(0.60, 0.62, 10), rng.uniform(0.70, 0.72, 10)])
    probs = np.stack([p, 1 - p], 1)  # cluster 0 is the least sure, then 1, then 2
    assert {i // 10 for i in _top("margin", probs, 3)} == {0}
    picked = _top("diverse", probs, 3, emb)
    assert sorted(i // 10 for i in picked) == [0, 1, 2]
    assert all(p[i] == p[(i // 10) * 10 : (i // 10) * 10 + 10].min() for i in picked), (
        "the least sure row of each cluster"
    )


def test_the_class_aware_strategy_picks_more_rows_of_the_small_class_than_random():
    """Issue #38: a seeded pool of 2,000 rows, 8% of them of class 2, which the teacher has labelled on
    4% of the rows so far; the student's probabilities are right on average and noisy. Rows the
    class-aware strategy (rare) sends to the teacher are of class 2 far more often than random ones, and
    with equal shares it favours no class."""
    rng = np.random.default_rng(7)  # not the strategies' seed 0: random's draw would match the classes' draw
    truth = rng.choice(3, size=2000, p=[0.62, 0.30, 0.08])
    logits = 1.2 * np.eye(3)[truth] + rng.normal(0, 1.0, (2000, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    shares = np.array([0.66, 0.30, 0.04])
    small = {name: float((truth[_top(name, probs, 100, shares=shares)] == 2).mean()) for name in ("rare", "random")}
    assert small["rare"] > 3 * small["random"] and small["rare"] > 0.3, small
    plain = _top("rare", probs, 100, shares=np.full(3, 1 / 3))
    assert _top("rare", probs, 100) == plain, "no shares: every class weighs the same"
    assert 0.02 < (truth[plain] == 2).mean() < 0.3, "equal shares: it favours no class"


def test_candidates_keep_the_best_rows_across_chunks():
    rng = np.random.default_rng(1)
    s = rng.random(1000)
    cands = Candidates(25)
    for start in range(0, 1000, 128):  # the pool arrives chunk by chunk
        cands.add([str(i) for i in range(start, min(start + 128, 1000))], s[start : start + 128])
    assert [int(row_id) for _, _, row_id, _ in cands.best()] == list(np.argsort(-s)[:25])
    assert len(cands.heap) == 25


def test_stop_rules():
    cfg = ActiveConfig(budget=300, test_rows=100, seed_rows=100, round_rows=50, patience=2, min_gain=0.01)
    rounds = lambda *agreements: [{"test_agreement": a, "done": True} for a in agreements]  # noqa: E731
    state = {"selected": [{}] * 250, "rounds": rounds(0.70, 0.75)}
    assert _stop_reason(cfg, state, 10_000) == ""
    assert "not improved by 0.01 for 2 rounds" in _stop_reason(
        cfg, {**state, "rounds": rounds(0.70, 0.80, 0.805, 0.79)}, 10_000
    )
    assert "budget of 300" in _stop_reason(cfg, {**state, "selected": [{}] * 300}, 10_000)
    assert "every pool row" in _stop_reason(cfg, state, 250)
    with pytest.raises(ValueError, match="budget: expected at least"):
        ActiveConfig(budget=150, test_rows=100, seed_rows=100)


def _run(tiny_llama, tiny_roberta, pool, out, *extra):
    return distillery_cli.main(
        [
            "active",
            "--data",
            str(pool),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--labels",
            "negative,positive",
            "--teacher",
            str(tiny_llama),
            "--student-model",
            str(tiny_roberta),
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--min-steps",
            "4",
            "--batch-size",
            "8",
            "--speed-rows",
            "0",
            "--budget",
            "40",
            "--test-rows",
            "10",
            "--seed-rows",
            "10",
            "--round-rows",
            "10",
            "--patience",
            "0",
            "--pool-chunk",
            "16",
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "pool.csv"
    rows = make_rows(80)
    rows.loc[::7, "review"] += (
        "\r and a bare carriage return as tweets have"  # it once split rows in the selection file
    )
    rows.to_csv(path, index=False, quoting=1)  # csv.QUOTE_ALL: the pool itself keeps them
    return path


def test_active_loop_spends_the_budget_once_per_row(tiny_llama, tiny_roberta, pool, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(tiny_llama, tiny_roberta, pool, out, "--strategy", "diverse") == 0
    printed = capsys.readouterr().out
    assert "stopping: the budget of 40 teacher calls is spent" in printed
    state = json.loads((out / "active" / "state.json").read_text())
    ids = [s["id"] for s in state["selected"]]
    assert len(ids) == 40 == len(set(ids)), "every teacher call is a different row"
    assert [r["rows"] for r in state["rounds"]] == [20, 10, 10] and all(r["done"] for r in state["rounds"])
    assert sum(s["split"] == "test" for s in state["selected"]) == 10
    manifest = json.loads((out / "annotations" / "manifest.json").read_text())
    assert manifest["rows"] == 40 and manifest["status"] == "complete"
    log = [json.loads(line) for line in (out / "active" / "rounds.jsonl").read_text().splitlines()]
    assert [r["calls"] for r in log] == [20, 30, 40] and [r["train_rows"] for r in log] == [10, 20, 30]
    assert all(0 <= r["test_agreement"] <= 1 and r["test_accuracy"] is not None for r in log)
    assert log[1]["score_mean"] is not None, "the strategy's scores are logged"
    # the teacher's labels of the training rows so far: what the class-aware strategy reads
    assert [sum(r["label_counts"]) for r in log] == [10, 20, 30]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [p["train_rows"] for p in metrics["learning_curve"]] == [
        10,
        20,
        30,
        30,
    ]  # every round, then the final student
    assert (out / "student" / "model.safetensors").is_file()


def test_a_killed_active_run_resumes_mid_round_without_asking_the_teacher_again(
    tiny_llama, tiny_roberta, pool, tmp_path, monkeypatch
):
    import importlib

    loop = importlib.import_module("distillery.active.loop")
    from distillery.annotate.local import LocalTeacher

    asked = []
    real_score = LocalTeacher.score
    monkeypatch.setattr(LocalTeacher, "score", lambda self, texts: (asked.extend(texts), real_score(self, texts))[1])
    real_distill, trained = loop.distill, []

    def die_in_round_two(*args, **kwargs):
        trained.append(1)
        if len(trained) == 2:
            raise KeyboardInterrupt  # killed after round 1's rows were annotated, before its student
        return real_distill(*args, **kwargs)

    monkeypatch.setattr(loop, "distill", die_in_round_two)
    out = tmp_path / "run"
    assert _run(tiny_llama, tiny_roberta, pool, out) == 130, "an interrupted run exits 130, resumable"
    state = json.loads((out / "active" / "state.json").read_text())
    assert len(state["selected"]) == 30 and not state["rounds"][-1].get("done")
    monkeypatch.setattr(loop, "distill", real_distill)
    asked_before = len(asked)
    assert _run(tiny_llama, tiny_roberta, pool, out) == 0
    rows_asked = [t for t in asked if not t.startswith(("N/A", "[MASK]")) and t]
    assert len(set(rows_asked)) == len(rows_asked) == 40, "each pool row went to the teacher once, across the kill"
    assert len(asked) - asked_before < len(asked), "the resumed run asked only about the rows it had not annotated"
    frame = pd.concat(pd.read_csv(p, keep_default_na=False) for p in (out / "annotations").glob("part-*.csv"))
    assert len(frame) == 40 and frame["id"].is_unique
