"""Issue #38, a decision fix measured post-hoc: a class bias that makes the student predict each class as
often as the teacher *expects* it (the mean of its calibrated probabilities), not as often as it *said*
it (its argmax shares, which the student learns and which under-count a small class).

    python benchmarks/expected_shares.py --results every_class_tuning_head_s0 \
        --name every_class_expected_shares_tuning_s0

No training: each run of ``benchmarks/every_class.py`` named in ``--results`` kept its student's raw
log-probs on the validation and test rows and the teacher's calibrated log-probs
(``OUT/every_class_logits.npz``). Per run, distill's default post-hoc scaling (``--scaling auto``) is
fitted as distill fits it, then the class bias on top of it: fitted on the validation rows so that the
student's argmax shares there equal the target shares (prior-correction steps, Saerens et al. 2002;
every_class.py's ``shares_bias``). Targets: the teacher's mean calibrated probability over the training
and validation rows, over the validation rows only, or halfway between that and its argmax shares. Each
student is scored on the test rows as every_class.py scores it.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import print_table, read_results, write_result
from every_class import _distill_rule, run_dir, score_rule, shares_bias


def _with_bias(target_of):
    """distill's default scaling, then a class bias that moves the validation rows' argmax shares to
    ``target_of(d)``."""
    base = _distill_rule("auto")

    def rule(d: dict) -> tuple[float, np.ndarray]:
        temperature, bias = base(d)
        bias = np.zeros(d["val_logits"].shape[1]) if bias is None else np.asarray(bias)
        return temperature, bias + shares_bias(d["val_logits"] / temperature + bias, 1.0, target_of(d))

    return rule


def _rows(d: dict) -> np.ndarray:
    return np.concatenate([d["val_teacher"], d["train_teacher"]])


def _argmax_shares(logp: np.ndarray) -> np.ndarray:
    return np.bincount(logp.argmax(1), minlength=logp.shape[1]) / len(logp)


RULES = {
    "default (--scaling auto)": _distill_rule("auto"),
    "expected shares, all rows": _with_bias(lambda d: np.exp(_rows(d)).mean(0)),
    "expected shares, validation rows": _with_bias(lambda d: np.exp(d["val_teacher"]).mean(0)),
    "halfway: expected and argmax shares": _with_bias(
        lambda d: (np.exp(_rows(d)).mean(0) + _argmax_shares(_rows(d))) / 2
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, help="comma-separated every_class results names (their runs)")
    parser.add_argument("--name", required=True, help="results file name")
    args = parser.parse_args()
    runs = []
    for record in (r for payload in read_results(args.results) for r in payload["results"]):
        d = dict(np.load(run_dir(record["set"], record["seed"], record.get("tag", "")) / "every_class_logits.npz"))
        for rule, fit in RULES.items():
            temperature, bias = fit(d)
            runs.append(
                {"set": record["set"], "seed": record["seed"], "rule": rule, **score_rule(d, record, temperature, bias)}
            )
    summary = []
    for rule in RULES:
        mine = [r for r in runs if r["rule"] == rule]
        per_set: dict[str, list[float]] = {}
        for r in mine:
            per_set.setdefault(r["set"], []).append(r["macro-F1 retention"])
        lowest = [r["lowest class F1 ratio"] for r in mine if r["lowest class F1 ratio"] is not None]
        summary.append(
            {
                "rule": rule,
                "mean macro-F1 ret.": f"{np.mean([r['macro-F1 retention'] for r in mine]):.4f}",
                "lowest set": f"{min(np.mean(v) for v in per_set.values()):.4f}",
                "lowest class ratio": f"{min(lowest):.3f}" if lowest else "-",
                "mean acc ret.": f"{np.mean([r['retention'] for r in mine]):.4f}",
                "ECE <= teacher + 0.02": f"{sum(r['student ECE'] <= r['teacher ECE'] + 0.02 for r in mine)}"
                f"/{len(mine)}",
                "not below majority": f"{sum(r['not below majority'] for r in mine)}/{len(mine)}",
            }
        )
    print_table(summary, list(summary[0]))
    command = f"python benchmarks/expected_shares.py --results {args.results} --name {args.name}"
    write_result(args.name, {"command": command, "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
