"""Serving a student: predict (formats, chunks, resume, errors), ONNX export parity, the model
card, and answer-or-defer (the bound on synthetic data, --defer, annotate --only-deferred)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_rows

from distillery import cli as distillery_cli
from distillery.annotate import read_annotations
from distillery.core.inputs import InputError, iter_texts
from distillery.serve import load_student
from distillery.student.defer import clopper_pearson_lower, pick_threshold


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tiny_roberta, tmp_path_factory):
    """`distillery run` on 60 reviews: annotations, a trained tiny student, metrics and its card."""
    out = tmp_path_factory.mktemp("served")
    make_rows(60).to_csv(out / "reviews.csv", index=False)
    code = distillery_cli.main(
        [
            "run",
            "--data",
            str(out / "reviews.csv"),
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
            "2",
            "--min-steps",
            "40",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--speed-rows",
            "8",
            "--out",
            str(out / "run"),
        ]
    )
    assert code == 0
    return out / "run"


def _inputs(tmp_path, n=30) -> dict:
    frame = make_rows(n).assign(rid=[f"r{i}" for i in range(n)])
    paths = {s: tmp_path / f"rows.{s}" for s in ("csv", "tsv", "jsonl", "json", "parquet")}
    frame.to_csv(paths["csv"], index=False)
    frame.to_csv(paths["tsv"], sep="\t", index=False)
    frame.to_json(paths["jsonl"], orient="records", lines=True)
    frame.to_json(paths["json"], orient="records")
    frame.to_parquet(paths["parquet"])
    return {"frame": frame, **paths}


def _predict(run_dir, data, out, *extra) -> int:
    return distillery_cli.main(
        [
            "predict",
            "--student",
            str(run_dir / "student"),
            "--data",
            str(data),
            "--text-column",
            "review",
            "--id-column",
            "rid",
            "--chunk-size",
            "7",
            "--predict-batch-size",
            "4",
            "--device",
            "cpu",
            "--predictions",
            str(out),
            *extra,
        ]
    )


def test_predict_reads_every_format_and_gives_the_students_probabilities(run_dir, tmp_path):
    inputs = _inputs(tmp_path)
    student = load_student(run_dir / "student")
    want = student.probabilities(inputs["frame"]["review"].tolist())
    for suffix in ("csv", "tsv", "jsonl", "json", "parquet"):
        out = tmp_path / f"preds-{suffix}.csv"
        assert _predict(run_dir, inputs[suffix], out) == 0
        got = pd.read_csv(out, keep_default_na=False)
        assert list(got.columns) == ["id", "text", "label", "p_negative", "p_positive", "confidence"]
        assert (
            got["id"].tolist() == inputs["frame"]["rid"].tolist()
            and got["text"].tolist() == inputs["frame"]["review"].tolist()
        )
        np.testing.assert_allclose(got[["p_negative", "p_positive"]].to_numpy(), want, atol=1e-6)
        assert got["label"].tolist() == [student.labels[i] for i in want.argmax(1)]
        np.testing.assert_allclose(got["confidence"], want.max(1), atol=1e-6)
        assert not list((tmp_path / f"preds-{suffix}.csv.parts").glob("part-*.csv")), (
            "the chunks are joined, then removed"
        )


def test_predict_resumes_after_a_crash_without_predicting_finished_chunks(run_dir, tmp_path, monkeypatch):
    inputs = _inputs(tmp_path)
    whole = tmp_path / "whole.csv"
    assert _predict(run_dir, inputs["csv"], whole) == 0
    import importlib

    predict_mod = importlib.import_module("distillery.serve.predict")  # the module, not serve.predict the function

    real, calls = predict_mod.prediction_frame, []

    def crash_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies in its third chunk
        return real(*args)

    monkeypatch.setattr(predict_mod, "prediction_frame", crash_on_third)
    out = tmp_path / "resumed.csv"
    assert _predict(run_dir, inputs["csv"], out) == 130, "an interrupted run exits 130, resumable"
    assert sorted(p.name for p in (tmp_path / "resumed.csv.parts").glob("part-*.csv")) == [
        "part-00000.csv",
        "part-00001.csv",
    ]
    assert not out.exists()
    calls.clear()
    monkeypatch.setattr(predict_mod, "prediction_frame", lambda *a: (calls.append(1), real(*a))[1])
    assert _predict(run_dir, inputs["csv"], out) == 0
    assert len(calls) == 3, "30 rows in chunks of 7: chunks 3, 4 and 5 are left after the crash"
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(whole))
    assert _predict(run_dir, inputs["csv"], out) == 0 and len(calls) == 3, "a finished run does nothing"


def test_predict_errors_are_one_line_and_lose_nothing(run_dir, tmp_path, capsys):
    inputs = _inputs(tmp_path)
    code = distillery_cli.main(
        [
            "predict",
            "--student",
            str(run_dir / "student"),
            "--data",
            str(inputs["csv"]),
            "--predictions",
            str(tmp_path / "p.csv"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "expected a column 'text'" in err and "--text-column" in err
    mine = tmp_path / "mine.csv"
    mine.write_text("precious,data\n1,2\n")
    assert _predict(run_dir, inputs["csv"], mine) == 2
    assert "not written by this predict run" in capsys.readouterr().err and mine.read_text() == "precious,data\n1,2\n"
    code = distillery_cli.main(["predict", "--student", str(tmp_path / "nope"), "--data", str(inputs["csv"])])
    assert code == 2 and "student not found" in capsys.readouterr().err


def test_iter_texts_streams_a_file_in_chunks_and_names_empty_lines(tmp_path):
    path = tmp_path / "rows.csv"
    pd.DataFrame({"text": [f"row {i}" for i in range(25)]}).to_csv(path, index=False)
    chunks = list(iter_texts(str(path), chunk_rows=10))
    assert [len(c) for c in chunks] == [10, 10, 5] and chunks[2]["id"].tolist() == ["20", "21", "22", "23", "24"]
    pd.DataFrame({"text": ["a", "b", "", "d"]}).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"found 1 empty \(file lines 4"):
        list(iter_texts(str(path), chunk_rows=2))
    assert [c["text"].tolist() for c in iter_texts(str(path), chunk_rows=2, drop_empty=True)] == [["a", "b"], ["d"]]


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_onnx_export_matches_the_pytorch_student(run_dir, tmp_path, variant):
    out = tmp_path / f"onnx-{variant}"
    assert (
        distillery_cli.main(
            ["export", "--student", str(run_dir / "student"), "--onnx-dir", str(out), "--variant", variant]
        )
        == 0
    )
    texts = make_rows(200)["review"].tolist() + ["terrible", "great", "the weather today", "I love it " * 30]
    want = load_student(run_dir / "student").probabilities(texts)
    onnx = load_student(out)
    assert onnx.kind == "onnx" and onnx.labels == ["negative", "positive"]
    got = onnx.probabilities(texts)
    # float32: the same model up to summation order. int8 weights: probabilities move, labels hold.
    assert np.abs(got - want).max() < (1e-5 if variant == "fp32" else 0.05)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    record = onnx.meta["export"]
    assert (
        record["variant"] == variant
        and "forced" in record["why"]
        and [c["name"] for c in record["candidates"]] == [variant]
    )
    assert record["graph"] == "fused", "an encoder is served as onnxruntime's fused graph"
    # The few lines docs/usage.md gives to serve it without Distillery.
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    session = ort.InferenceSession(str(out / "model.onnx"))
    enc = tok(texts[:3], padding=True, truncation=True, return_tensors="np")
    logits = session.run(None, {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})[0]
    # int8 quantizes activations per batch, so compare on the same batch of rows.
    np.testing.assert_allclose(
        np.exp(logits) / np.exp(logits).sum(1, keepdims=True), onnx.probabilities(texts[:3]), atol=1e-5
    )
    card = (out / "README.md").read_text()
    assert "ONNX export" in card and f"- {'int8' if variant == 'int8' else 'float32'}" in card


def test_the_post_hoc_scaling_travels_into_the_onnx_graph(run_dir, tmp_path):
    """A student with a temperature and a class bias (as distill fits them, issue #28) exports a graph
    whose plain softmax gives the scaled probabilities; the export records both as built in."""
    student = tmp_path / "scaled"
    shutil.copytree(run_dir / "student", student)
    meta = json.loads((student / "distillery_student.json").read_text())
    (student / "distillery_student.json").write_text(
        json.dumps({**meta, "temperature": 2.5, "class_bias": [0.7, -0.7]})
    )
    texts = make_rows(40)["review"].tolist() + ["terrible", "great"]
    scaled, plain = load_student(student).probabilities(texts), load_student(run_dir / "student").probabilities(texts)
    assert np.abs(scaled - plain).max() > 0.05  # the scaling is applied where the student is loaded
    out = tmp_path / "onnx"
    assert distillery_cli.main(["export", "--student", str(student), "--onnx-dir", str(out), "--variant", "fp32"]) == 0
    onnx = load_student(out)
    assert np.abs(onnx.probabilities(texts) - scaled).max() < 1e-5
    record = json.loads((out / "distillery_student.json").read_text())
    assert record["temperature"] == 1.0 and "class_bias" not in record
    assert record["scaled_by"] == 2.5 and record["shifted_by"] == [0.7, -0.7]


def _check_rows(run_dir) -> tuple[list[str], np.ndarray]:
    """The rows export checks the variants on (the test rows, topped up with training rows to 200)
    and the teacher's labels of the test rows, as export reads them."""
    frame, manifest = read_annotations(run_dir / "annotations")
    frame = frame[frame["error_type"] == ""]
    test, others = frame[frame["split"] == "test"], frame[frame["split"] != "test"]
    texts = test["text"].tolist() + others["text"].tolist()[: max(0, 200 - len(test))]
    return texts, test["teacher_label"].map({lab: i for i, lab in enumerate(manifest["labels"])}).to_numpy()


def _student_with_threshold(run_dir, tmp_path, threshold: float, target: float):
    """A copy of the run's student whose record holds an answer-or-defer threshold for ``target``."""
    student = tmp_path / "student"
    shutil.copytree(run_dir / "student", student)
    meta = json.loads((student / "distillery_student.json").read_text())
    meta["defer"] = {
        "threshold": threshold,
        "coverage": 1.0,
        "agreement": 1.0,
        "lower_bound": 0.9,
        "rows": 10,
        "target": target,
    }
    (student / "distillery_student.json").write_text(json.dumps(meta))
    return student


def test_export_picks_the_fastest_variant_that_keeps_the_labels_and_records_why(run_dir, tmp_path, capsys):
    student = _student_with_threshold(run_dir, tmp_path, 0.5, target=0.6)
    out = tmp_path / "onnx"
    assert (
        distillery_cli.main(
            ["export", "--student", str(student), "--annotations", str(run_dir / "annotations"), "--onnx-dir", str(out)]
        )
        == 0
    )
    shown = capsys.readouterr().out
    record = json.loads((out / "distillery_student.json").read_text())
    export = record["export"]
    texts, teacher = _check_rows(run_dir)
    assert export["rows"] == len(texts) > len(teacher) > 0 and export["rows_from"] == "test and training"
    candidates = {c["name"]: c for c in export["candidates"]}
    assert set(candidates) == {"int8", "int8-ffn-fp32", "fp32"} and candidates["fp32"]["parity"] == 1.0
    passing = [c for c in export["candidates"] if c["parity"] >= 0.99]
    assert export["variant"] == max(passing, key=lambda c: c["rows_per_s"])["name"], (
        "the fastest of the variants that keep the labels"
    )
    assert f"export: {export['variant']}: the fastest" in shown
    # What is served is what was measured: its labels on the check rows, against the PyTorch student.
    served = load_student(out).probabilities(texts)
    want = load_student(student).probabilities(texts)
    assert (served.argmax(1) == want.argmax(1)).mean() == pytest.approx(candidates[export["variant"]]["parity"])
    assert record["weights"] == ("float32" if export["variant"] == "fp32" else "int8")
    # The answer-or-defer threshold is the served variant's own, on the same rows and target.
    on_test = served[: len(teacher)]  # the threshold is about rows the student did not train on
    expected = pick_threshold(on_test.max(1), on_test.argmax(1) == teacher, 0.6)
    assert record["defer"]["threshold"] == pytest.approx(expected["threshold"]) and record["defer"]["target"] == 0.6
    assert record["defer"]["recomputed_on"] == len(teacher)


def test_export_with_min_parity_one_serves_a_variant_that_changes_no_label(run_dir, tmp_path):
    out = tmp_path / "onnx"
    assert (
        distillery_cli.main(
            ["export", "--student", str(run_dir / "student"), "--onnx-dir", str(out), "--min-parity", "1"]
        )
        == 0
    )
    export = json.loads((out / "distillery_student.json").read_text())["export"]
    chosen = next(c for c in export["candidates"] if c["name"] == export["variant"])
    assert chosen["parity"] == 1.0
    texts, _ = _check_rows(run_dir)
    assert (
        load_student(out).probabilities(texts).argmax(1)
        == load_student(run_dir / "student").probabilities(texts).argmax(1)
    ).all()


def test_export_without_the_runs_rows_serves_fp32_and_says_why(run_dir, tmp_path, capsys):
    student = tmp_path / "student"
    shutil.copytree(run_dir / "student", student)
    config = yaml.safe_load((student / "distillery_config.yaml").read_text())
    config.update(out=str(tmp_path / "elsewhere"), annotations="")  # a student copied away from its run
    (student / "distillery_config.yaml").write_text(yaml.safe_dump(config))
    assert distillery_cli.main(["export", "--student", str(student), "--onnx-dir", str(tmp_path / "onnx")]) == 0
    assert "no rows of the student's run" in capsys.readouterr().out
    export = json.loads((tmp_path / "onnx" / "distillery_student.json").read_text())["export"]
    assert export["variant"] == "fp32" and export["rows"] == 0 and export["graph"] == "fused"
    texts = make_rows(50)["review"].tolist()
    np.testing.assert_allclose(
        load_student(tmp_path / "onnx").probabilities(texts), load_student(student).probabilities(texts), atol=1e-5
    )


def test_pick_takes_the_fastest_passing_variant_and_falls_back_to_fp32():
    from distillery.serve.variants import Candidate, pick

    def c(name, parity, speed):
        return Candidate(name, parity, 0.1, speed, speed, 1.0)

    chosen, why = pick([c("int8", 0.985, 300), c("int8-ffn-fp32", 0.993, 200), c("fp32", 1.0, 100)], 0.99)
    assert chosen.name == "int8-ffn-fp32" and "int8 did not" in why
    chosen, _ = pick([c("int8", 0.995, 300), c("int8-ffn-fp32", 0.993, 200), c("fp32", 1.0, 100)], 0.99)
    assert chosen.name == "int8"
    chosen, why = pick([c("int8", 0.9, 300), c("fp32", 0.95, 100)], 0.99)
    assert chosen.name == "fp32" and "no variant" in why


def test_export_refuses_bad_settings_with_one_line(run_dir, tmp_path, capsys):
    base = ["export", "--student", str(run_dir / "student"), "--onnx-dir", str(tmp_path / "x")]
    assert distillery_cli.main([*base, "--variant", "int4"]) == 2
    assert "int4" in capsys.readouterr().err
    assert distillery_cli.main([*base, "--min-parity", "1.5"]) == 2
    assert "--min-parity: expected a number > 0 and <= 1, found 1.5" in capsys.readouterr().err
    assert distillery_cli.main([*base, "--annotations", str(tmp_path / "nowhere")]) == 2
    assert "expected the run's annotations folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "a refused export writes nothing"


def test_model_card_carries_the_run_and_its_evaluation(run_dir):
    card = (run_dir / "student" / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(front)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "annotations" / "manifest.json").read_text())
    assert meta["pipeline_tag"] == "text-classification" and meta["labels"] == ["negative", "positive"]
    assert "distillery" in meta["tags"] and meta["library_name"] == "transformers"
    results = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert results["accuracy"] == round(metrics["student"]["accuracy"], 4) and results["agreement"] == round(
        metrics["agreement"], 4
    )
    ci = metrics["student"]["ci"]["accuracy"]
    assert f"{metrics['student']['accuracy']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" in body
    assert manifest["prompt_hash"] in body and manifest["calibration"]["mode"] in body
    assert "α = 0.5" in body and "T = 2.0" in body and "Intended use and limitations" in body
    summary = json.loads((run_dir / "student" / "train_summary.json").read_text())
    assert f"{summary['train_rows']} training" in body and f"{summary['steps']} optimizer steps" in body


def test_the_card_of_a_student_with_a_class_bias_does_not_send_users_to_the_raw_pipeline(run_dir, tmp_path):
    """A plain transformers pipeline reads the raw logits; with a class bias its labels can differ from
    the ones evaluate measured, so the card's recipe loads the student with its scaling (issue #28)."""
    from distillery.student.card import write_card

    student = tmp_path / "biased"
    shutil.copytree(run_dir / "student", student)
    meta = json.loads((student / "distillery_student.json").read_text())
    (student / "distillery_student.json").write_text(json.dumps({**meta, "class_bias": [0.4, -0.4]}))
    body = write_card(student).read_text()
    assert "load_student" in body and "without the class bias" in body and "+0.40, -0.40" in body
    assert 'pipeline("text-classification"' not in body
    assert 'pipeline("text-classification"' in (run_dir / "student" / "README.md").read_text() or meta.get("class_bias")


def test_clopper_pearson_lower_bound_matches_closed_forms():
    from scipy.stats import binomtest

    assert clopper_pearson_lower(0, 10) == 0.0
    assert clopper_pearson_lower(20, 20) == pytest.approx(0.05 ** (1 / 20))  # all successes: alpha^(1/n)
    # One-sided 95% = the lower end of the two-sided 90% exact interval.
    assert clopper_pearson_lower(83, 100) == pytest.approx(binomtest(83, 100).proportion_ci(0.90, method="exact").low)


def test_pick_threshold_keeps_its_guarantee_on_synthetic_data():
    """Confidence c ~ U(0.5, 1) and the student agrees with probability c: the rows answered at
    threshold t agree at (1 + t) / 2, so target 0.95 is met exactly at t = 0.9 (coverage 0.2)."""
    rng = np.random.default_rng(0)
    misses, coverages = 0, []
    for _ in range(200):
        conf = rng.uniform(0.5, 1.0, 2000)
        agree = rng.random(2000) < conf
        picked = pick_threshold(conf, agree, target=0.95)
        if picked is None:
            coverages.append(0.0)
            continue
        misses += (1 + picked["threshold"]) / 2 < 0.95  # the true agreement above the chosen threshold
        coverages.append(picked["coverage"])
    assert misses <= 10, f"the 95% guarantee failed in {misses} of 200 samples"
    # The oracle answers 20%; a 95% guarantee from 2,000 rows costs most of that (measured: 5.1% on average).
    assert 0.03 < np.mean(coverages) < 0.2
    always_wrong = pick_threshold(
        np.linspace(0.5, 1, 500), np.arange(500) % 5 != 0, target=0.95
    )  # 80% agreement everywhere
    assert always_wrong is None


def test_the_guarantee_holds_on_a_temperature_scaled_overconfident_student():
    """A student three times too confident (its logits 3x the true ones) is scaled by a temperature
    fitted on 2,000 rows of its teacher's (calibrated) distribution; a threshold picked for 0.90 on
    2,000 scaled rows still keeps its promise on fresh rows in at least 95% of 100 draws, and answers
    more rows than the target alone allows."""
    import torch

    from distillery.distill.scaling import fit_temperature

    rng = np.random.default_rng(0)

    def draw(n):  # binary: true P(first label) from true logits; the student's logits are 3x too big
        true = rng.normal(0, 2, n)
        first = rng.random(n) < 1 / (1 + np.exp(-true))
        logits = np.stack([3 * true, np.zeros(n)], 1)
        return logits, np.where(first, 0, 1)

    fit_logits, _ = draw(2000)
    t, _ = fit_temperature(fit_logits, fit_logits / 3)  # the teacher: the true logits
    assert t == pytest.approx(3.0, rel=0.15)
    misses, coverages = 0, []
    for _ in range(100):
        logits, gold = draw(2000)
        probs = torch.softmax(torch.from_numpy(logits) / t, -1).numpy()
        picked = pick_threshold(probs.max(1), probs.argmax(1) == gold, target=0.90)
        coverages.append(picked["coverage"] if picked else 0.0)
        if picked is None:  # one miss among the most confident rows ends the search: defer every row
            continue
        fresh, fresh_gold = draw(20000)
        fresh_probs = torch.softmax(torch.from_numpy(fresh) / t, -1).numpy()
        answered = fresh_probs.max(1) >= picked["threshold"]
        misses += (fresh_probs.argmax(1) == fresh_gold)[answered].mean() < 0.90
    assert misses <= 5, f"the 0.90 promise failed on fresh rows in {misses} of 100 draws"
    assert np.mean(coverages) > 0.3


def test_defer_marks_rows_and_only_deferred_sends_them_to_the_teacher(run_dir, tiny_llama, tmp_path, capsys):
    inputs = _inputs(tmp_path, n=20)
    preds = tmp_path / "preds.csv"
    assert _predict(run_dir, inputs["csv"], preds, "--defer", "--defer-threshold", "0.9") == 0
    frame = pd.read_csv(preds)
    assert (frame["deferred"] == (frame["confidence"] < 0.9)).all() and frame["deferred"].any()
    code = distillery_cli.main(
        [
            "annotate",
            "--data",
            str(preds),
            "--only-deferred",
            "--teacher",
            str(tiny_llama),
            "--device",
            "cpu",
            "--labels",
            "negative,positive",
            "--out",
            str(tmp_path / "deferred"),
        ]
    )
    assert code == 0
    annotated = pd.concat(
        pd.read_csv(p, keep_default_na=False, dtype={"id": str})
        for p in (tmp_path / "deferred" / "annotations").glob("part-*.csv")
    )
    assert sorted(annotated["id"]) == sorted(frame.loc[frame["deferred"], "id"].astype(str)), (
        "only the deferred rows go to the teacher"
    )
    merged = pd.read_csv(tmp_path / "deferred" / "merged.csv", keep_default_na=False, dtype={"id": str})
    teacher = dict(zip(annotated["id"], annotated["teacher_label"]))
    for row, deferred in zip(merged.itertuples(), frame["deferred"]):
        assert row.source == ("teacher" if deferred else "student")
        assert row.label == (
            teacher[row.id] if deferred else frame.loc[frame["id"].astype(str) == row.id, "label"].item()
        )


def test_defer_after_evaluate_uses_its_threshold_or_defers_every_row(run_dir, tmp_path, capsys):
    meta = json.loads((run_dir / "student" / "distillery_student.json").read_text())
    assert meta.get("evaluation"), "the run evaluated its student"
    inputs = _inputs(tmp_path, n=5)
    code = _predict(run_dir, inputs["csv"], tmp_path / "p.csv", "--defer")
    assert code == 0 and "deferred" in pd.read_csv(tmp_path / "p.csv").columns
    if not meta.get("defer"):  # evaluate found no threshold for the tiny student: README says every row defers
        assert pd.read_csv(tmp_path / "p.csv")["deferred"].all()
        assert "every row is deferred" in capsys.readouterr().out


def test_a_merged_lora_student_exports_too(tiny_llama, tmp_path):
    import torch

    from distillery.distill import DistillConfig
    from distillery.distill import load_student as new_student
    from distillery.student import save_student

    cfg = DistillConfig(
        student_kind="llama-lora", student_model=str(tiny_llama), device="cpu", settings={"merge": True}
    )
    tok, model = new_student(cfg, ["negative", "positive"])
    with torch.no_grad():  # move the adapters and head away from their initial values
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    save_student(model, tok, tmp_path / "student", cfg, ["negative", "positive"])
    code = distillery_cli.main(["export", "--student", str(tmp_path / "student"), "--onnx-dir", str(tmp_path / "x")])
    assert code == 2, "an adapter is not exported: its merged/ folder is"
    assert (
        distillery_cli.main(
            [
                "export",
                "--student",
                str(tmp_path / "student" / "merged"),
                "--variant",
                "fp32",
                "--onnx-dir",
                str(tmp_path / "onnx"),
            ]
        )
        == 0
    )
    texts = [
        "I love this movie",
        "terrible",
        "what a great and wonderful day it was",
        "meh",
    ]  # padded: the last-token pick is traced
    want = load_student(tmp_path / "student" / "merged").probabilities(texts)
    assert load_student(tmp_path / "student" / "merged").kind == "merged"
    np.testing.assert_allclose(load_student(tmp_path / "onnx").probabilities(texts), want, atol=1e-5)


def test_export_never_writes_into_the_student_or_a_file(run_dir, tmp_path, capsys):
    student = tmp_path / "student"
    shutil.copytree(run_dir / "student", student)
    before = {p.name: p.read_bytes() for p in student.iterdir() if p.is_file()}
    for target, message in [
        (student, "the student's folder"),
        (tmp_path, "the student's folder, inside it or around it"),
        (run_dir, "holds a student or a run"),
    ]:
        assert distillery_cli.main(["export", "--student", str(student), "--onnx-dir", str(target)]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "notes.csv").write_text("mine\n")
    assert distillery_cli.main(["export", "--student", str(student), "--onnx-dir", str(tmp_path / "notes.csv")]) == 2
    assert "expected a folder for the ONNX student; found the file" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in student.iterdir() if p.is_file()} == before and load_student(
        student
    ).kind == "encoder"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert distillery_cli.main(["export", "--student", str(student), "--onnx-dir", str(mine)]) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"], (
        "a refused folder gets nothing, not even a lock file"
    )


def test_export_finds_its_run_through_a_relative_out(run_dir, tmp_path):
    run = tmp_path / "run-elsewhere"
    shutil.copytree(run_dir / "student", run / "student")
    shutil.copytree(run_dir / "annotations", run / "annotations")
    config = yaml.safe_load((run / "student" / "distillery_config.yaml").read_text())
    config.update(out="data/runs/run-elsewhere", annotations="")  # relative to where distill ran, not to here
    (run / "student" / "distillery_config.yaml").write_text(yaml.safe_dump(config))
    assert distillery_cli.main(["export", "--student", str(run / "student"), "--variant", "fp32"]) == 0
    assert json.loads((run / "student-onnx" / "distillery_student.json").read_text())["export"]["rows"] == len(
        _check_rows(run_dir)[0]
    )


def test_export_keeps_evaluates_threshold_when_too_few_rows_check_it(run_dir, tmp_path, capsys):
    student = _student_with_threshold(run_dir, tmp_path, 0.61, target=0.6)
    assert (
        distillery_cli.main(
            ["export", "--student", str(student), "--onnx-dir", str(tmp_path / "onnx"), "--check-rows", "5"]
        )
        == 0
    )
    assert (
        "kept evaluate's answer-or-defer threshold (0.6100): 5 test rows cannot pass target 0.6"
        in capsys.readouterr().out
    )
    defer = json.loads((tmp_path / "onnx" / "distillery_student.json").read_text())["defer"]
    assert defer["threshold"] == 0.61 and defer["kept_from"] == "evaluate"


def test_a_killed_export_is_refused_until_rerun_and_predict_never_mixes_two_exports(run_dir, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    out, rows = tmp_path / "onnx", tmp_path / "rows.csv"
    make_rows(12).to_csv(rows, index=False)
    export = [
        sys.executable,
        "-m",
        "distillery",
        "export",
        "--student",
        str(run_dir / "student"),
        "--onnx-dir",
        str(out),
    ]
    assert subprocess.run([*export, "--variant", "int8"], capture_output=True, timeout=300).returncode == 0
    predict = [
        "predict",
        "--student",
        str(out),
        "--data",
        str(rows),
        "--text-column",
        "review",
        "--predictions",
        str(tmp_path / "p.csv"),
    ]
    assert distillery_cli.main(predict) == 0
    proc = subprocess.Popen([*export, "--variant", "fp32"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".export-*")) and time.monotonic() < deadline:  # the new export has started its work
            time.sleep(0.05)
        assert list(out.glob(".export-*")), "the second export never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    with pytest.raises(Exception, match="the export did not finish"):
        load_student(out)
    assert distillery_cli.main(predict) == 2
    assert "the export did not finish" in capsys.readouterr().err
    assert subprocess.run([*export, "--variant", "fp32"], capture_output=True, timeout=300).returncode == 0
    assert not list(out.glob(".export-*")), "the rerun removes the killed export's work files"
    assert json.loads((out / "distillery_student.json").read_text())["export"]["variant"] == "fp32"
    assert distillery_cli.main(predict) == 2, "the predictions of the int8 export are not resumed with the fp32 one"
    assert "different weights" in capsys.readouterr().err
