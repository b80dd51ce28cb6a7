"""Keep every class (issue #17): accuracy, macro-F1 and the worst class's F1 retention, and the
student's calibration before and after temperature scaling, on user-like sets.

    python benchmarks/class_balance.py [--scenarios "long 75/25,sst2 80/20"] [--rows 500,2000] [--seeds 0,1,2] [--class-
    weights none,auto]

The scenarios (GRID) are resampled from the big pools of benchmarks/real_sets.py, annotated once
by the embedded teacher (``python benchmarks/real_sets.py --sets long,sst2,tweets2-2k,tweets3-2k,agnews-2k``,
~12 min here). Per scenario, training-row count, seed and ``--class-weights`` setting: the
annotations are calibrated with ``--calibrate auto`` (gold, no teacher call), a MiniLM student is
distilled with every other default, and evaluate scores it against gold on the test rows. The
student is then read again with its temperature set to 1 (the same weights, unscaled) to measure
what temperature scaling changed: ECE and the answer-or-defer coverage at a target agreement of
0.90. A setting that weights nothing (``auto`` on a balanced set) trains the very same student as
``none``: it is not trained twice. Prints one row per run, then the mean ± std over seeds with
the issue's targets checked. Results: benchmarks/results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from common import ROOT, machine, print_table, read_results, write_result
from real_sets import materialize, scenario

from distillery.annotate import read_annotations
from distillery.distill import DistillConfig, distill
from distillery.evaluation import EvaluateConfig, evaluate
from distillery.evaluation.evaluate import answer_or_defer, eval_rows
from distillery.evaluation.metrics import expected_calibration_error
from distillery.student import load_student

TARGET = 0.90
# name -> (pool of real_sets.py, label shares of train and test rows or None = the pool's own, default train rows, test
# rows)
GRID = {
    "long 75/25": (
        "long",
        None,
        500,
        400,
    ),  # 600 train rows: no 2,000-row run (a 2,000-row long pool would take ~15 min to annotate)
    "sst2 80/20": ("sst2", 0.8, 500, 555),
    "tweets2 75/25": ("tweets2-2k", 0.75, 500, 700),
    "tweets3 as shipped": ("tweets3-2k", None, 500, 1000),
    "agnews balanced": ("agnews-2k", None, 500, 800),
    "agnews 55/25/15/5": ("agnews-2k", (0.55, 0.25, 0.15, 0.05), 500, 720),
}


def one(name: str, n_train: int, seed: int, weights: str) -> dict:
    """Distil and evaluate one scenario; returns the row of the results table."""
    rows = scenario(name, seed, n_train, GRID)
    slug = name.replace(" ", "-").replace("/", "-")
    out = ROOT / "data" / "runs" / f"bench-balance-{slug}-n{n_train}-s{seed}-{weights}"
    materialize(rows, GRID[name][0], out, "auto")
    started = time.perf_counter()
    distill(DistillConfig(out=str(out), seed=seed, device="cpu", overwrite=True, class_weights=weights))
    metrics = evaluate(
        EvaluateConfig(out=str(out), speed_rows=0, target_agreement=TARGET, device="cpu", overwrite=True)
    )
    seconds = time.perf_counter() - started
    teacher, student = metrics["teacher"], metrics["student"]
    summary = json.loads((out / "student" / "train_summary.json").read_text())
    # The same student without its temperature: what scaling changed (on evaluate's own rows).
    frame, manifest = read_annotations(out / "annotations")
    data = eval_rows(EvaluateConfig(out=str(out)), frame, manifest)
    loaded = load_student(out / "student")
    scaled_t, loaded.temperature, loaded.class_bias = loaded.temperature, 1.0, None
    raw = loaded.probabilities(data.rows["text"].tolist())
    raw_defer = answer_or_defer(raw, data.teacher_probs.argmax(1), data.gold, TARGET)
    picked, raw_picked = student["defer"]["picked"], raw_defer["picked"]
    return {
        "scenario": name,
        "train rows": n_train,
        "seed": seed,
        "class weights": weights,
        "weights used": summary.get("class_weights"),
        "test rows": len(data.rows),
        "calibration": metrics["calibration"].get("mode"),
        "teacher acc": teacher["accuracy"],
        "student acc": student["accuracy"],
        "majority": metrics["majority_accuracy"],
        "teacher macro-F1": teacher["macro_f1"],
        "student macro-F1": student["macro_f1"],
        "teacher class F1": {k: v["f1"] for k, v in teacher["per_class"].items()},
        "student class F1": {k: v["f1"] for k, v in student["per_class"].items()},
        "retention": metrics["retention"],
        "macro-F1 retention": metrics["macro_f1_retention"],
        "worst class": metrics["worst_class"],
        "worst class retention": metrics["worst_class_retention"],
        "teacher ECE": teacher["ece"],
        "student ECE unscaled": expected_calibration_error(raw, data.gold),
        "student ECE scaled": student["ece"],
        "temperature": scaled_t,
        f"coverage@{TARGET} unscaled": raw_picked["coverage"] if raw_picked else 0.0,
        f"coverage@{TARGET} scaled": picked["coverage"] if picked else 0.0,
        "seconds": seconds,
    }


_REFITTED: dict = {}  # run dir -> refitted fields (a run shared by auto and none is scored once)


def refit_temperature(record: dict) -> dict:
    """``record`` with its post-hoc scaling refitted by distill's current rule (``--scaling auto``,
    distill/scaling.py's pick_scaling on the validation rows) on the same saved weights, and the scaled
    ECE and coverage scored again: runs trained before a change of the rule stay comparable."""
    import yaml

    from distillery.core.annotations import label_columns
    from distillery.distill.data import load_training_rows
    from distillery.distill.scaling import MIN_SCALING_ROWS, pick_scaling, scaled_probabilities

    out = _run_dir(record)
    if out in _REFITTED:
        return {**record, **_REFITTED[out]}
    cfg = DistillConfig.from_flat(
        yaml.safe_load((out / "student" / "distillery_config.yaml").read_text()), strict=False
    )
    rows = load_training_rows(cfg)
    student = load_student(out / "student")
    student.temperature, student.class_bias = 1.0, None
    temperature, bias = 1.0, None
    if len(rows.val) >= MIN_SCALING_ROWS:
        logits = np.log(np.maximum(student.probabilities(rows.val["text"].tolist()), np.finfo(np.float32).tiny))
        teacher = rows.val[label_columns(rows.labels)].to_numpy(np.float64)
        gold = rows.val["gold"].map(rows.labels.index).to_numpy() if rows.val["gold"].isin(rows.labels).all() else None
        temperature, bias, _ = pick_scaling(logits, teacher, gold)
    frame, manifest = read_annotations(out / "annotations")
    data = eval_rows(EvaluateConfig(out=str(out)), frame, manifest)
    raw = student.probabilities(data.rows["text"].tolist())
    scaled = scaled_probabilities(np.log(np.maximum(raw, np.finfo(np.float32).tiny)), temperature, bias)
    picked = answer_or_defer(scaled, data.teacher_probs.argmax(1), data.gold, TARGET)["picked"]
    _REFITTED[out] = {
        "temperature": temperature,
        "class bias": bias,
        "student ECE scaled": expected_calibration_error(scaled, data.gold),
        f"coverage@{TARGET} scaled": picked["coverage"] if picked else 0.0,
        "temperature refitted": True,
    }
    return {**record, **_REFITTED[out]}


def _run_dir(record: dict):
    source = record.get("same as", record["class weights"])
    slug = record["scenario"].replace(" ", "-").replace("/", "-")
    return ROOT / "data" / "runs" / f"bench-balance-{slug}-n{record['train rows']}-s{record['seed']}-{source}"


def reapply_auto(results: list[dict]) -> list[dict]:
    """Each ``auto`` run as distill's current auto rule would train it: a weighted run stays; one the rule
    no longer weights is the unweighted (``none``) run of the same rows and seed, which is the very same
    training. Runs trained before a change of the rule stay comparable without training again."""
    import yaml

    from distillery.distill.data import load_training_rows
    from distillery.distill.losses import class_weights

    out = []
    for record in results:
        if record["class weights"] != "auto":
            out.append(record)
            continue
        cfg = DistillConfig.from_flat(
            yaml.safe_load((_run_dir(record) / "student" / "distillery_config.yaml").read_text()), strict=False
        )
        weighted_now = class_weights("auto", load_training_rows(cfg)) is not None
        if weighted_now == (record["weights used"] is not None):
            out.append(record)
            continue
        twin = next(
            (
                r
                for r in results
                if r["class weights"] == "none"
                and (r["scenario"], r["train rows"], r["seed"])
                == (record["scenario"], record["train rows"], record["seed"])
            ),
            None,
        )
        if weighted_now or twin is None:
            raise SystemExit(
                f"{record['scenario']}, {record['train rows']} rows, seed {record['seed']}: auto now "
                f"{'weights' if weighted_now else 'does not weight'} the classes and no such run exists; train it"
            )
        out.append({**twin, "class weights": "auto", "same as": "none", "weights used": None})
    return out


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.mean(values):.4f}" + (f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else "")


def summarise(results: list[dict]) -> list[dict]:
    """Mean ± std over seeds per scenario, rows and setting, with the issue's targets checked."""
    table = []
    for key in dict.fromkeys((r["scenario"], r["train rows"], r["class weights"]) for r in results):
        runs = [r for r in results if (r["scenario"], r["train rows"], r["class weights"]) == key]
        worst = [r["worst class retention"] for r in runs if r["worst class retention"] is not None]
        ece_ok = all(r["student ECE scaled"] <= r["teacher ECE"] + 0.02 for r in runs)
        table.append(
            {
                "scenario": key[0],
                "train rows": key[1],
                "class weights": key[2],
                "seeds": len(runs),
                "teacher acc": _mean_std([r["teacher acc"] for r in runs]),
                "student acc": _mean_std([r["student acc"] for r in runs]),
                "majority": _mean_std([r["majority"] for r in runs]),
                "retention": _mean_std([r["retention"] for r in runs]),
                "macro-F1 retention": _mean_std([r["macro-F1 retention"] for r in runs]),
                "worst class retention (min)": f"{min(worst):.3f}" if worst else "-",
                "teacher ECE": _mean_std([r["teacher ECE"] for r in runs]),
                "student ECE unscaled": _mean_std([r["student ECE unscaled"] for r in runs]),
                "student ECE scaled": _mean_std([r["student ECE scaled"] for r in runs]),
                "macro-F1 ret >= 0.97": all(r["macro-F1 retention"] >= 0.97 for r in runs),
                "every class >= 0.85x": bool(worst) and min(worst) >= 0.85,
                "ECE <= teacher + 0.02": ece_ok,
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(GRID))
    parser.add_argument("--rows", default="500", help="comma-separated numbers of training rows")
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--class-weights", default="none,auto", help="comma-separated settings of distill --class-weights to compare"
    )
    parser.add_argument("--name", default="class_balance", help="results file name under benchmarks/results/")
    parser.add_argument(
        "--merge",
        default="",
        help="comma-separated results names to merge into NAME (their runs summarised "
        "together, e.g. seeds run apart); trains nothing",
    )
    parser.add_argument(
        "--reapply-auto",
        action="store_true",
        help="with --merge: each auto run as distill's current auto rule "
        "trains it (the weighted run, or the unweighted run of the same rows and seed)",
    )
    parser.add_argument(
        "--refit-temperature",
        action="store_true",
        help="with --merge: refit each saved student's temperature "
        "by distill's current rule and score its ECE and coverage again (the weights are not retrained)",
    )
    args = parser.parse_args()
    if args.merge:
        parts = read_results(args.merge)
        results = [r for part in parts for r in part["results"]]
        if args.reapply_auto:
            results = reapply_auto(results)
        if args.refit_temperature:
            results = [refit_temperature(r) for r in results]
        summary = summarise(results)
        print_table(summary, list(summary[0]))
        write_result(
            args.name,
            {
                "command": " ".join(["python benchmarks/class_balance.py", *sys.argv[1:]]),
                "merged": [part["command"] for part in parts],
                "machine": parts[0]["machine"],
                "target_agreement": TARGET,
                "summary": summary,
                "results": results,
            },
        )
        return
    started = time.perf_counter()
    results = []
    for name in args.scenarios.split(","):
        for n_train in map(int, args.rows.split(",")):
            for seed in map(int, args.seeds.split(",")):
                done = {}
                # auto first: when it weights nothing, none is the very same student.
                for weights in sorted(args.class_weights.split(","), key=lambda w: w != "auto"):
                    if weights == "none" and "auto" in done and done["auto"]["weights used"] is None:
                        done["none"] = {**done["auto"], "class weights": "none", "same as": "auto"}
                    else:
                        done[weights] = one(name.strip(), n_train, seed, weights)
                        print(json.dumps({k: v for k, v in done[weights].items() if "class F1" not in k}), flush=True)
                results += [done[w] for w in args.class_weights.split(",")]
    print_table(
        results,
        [
            "scenario",
            "train rows",
            "seed",
            "class weights",
            "teacher acc",
            "student acc",
            "majority",
            "retention",
            "macro-F1 retention",
            "worst class",
            "worst class retention",
            "teacher ECE",
            "student ECE unscaled",
            "student ECE scaled",
            f"coverage@{TARGET} unscaled",
            f"coverage@{TARGET} scaled",
        ],
    )
    summary = summarise(results)
    print_table(summary, list(summary[0]))
    write_result(
        args.name,
        {
            "command": " ".join(["python benchmarks/class_balance.py", *sys.argv[1:]]),
            "machine": machine(),
            "target_agreement": TARGET,
            "wall_s": time.perf_counter() - started,
            "summary": summary,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
