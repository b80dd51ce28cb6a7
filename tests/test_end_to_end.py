"""`distillery run` end to end on a tiny random Llama teacher and a tiny random RoBERTa student."""

import json

import yaml
from transformers import pipeline

from distillery import cli as distillery_cli


def test_run_writes_annotations_student_and_report(tiny_llama, tiny_roberta, reviews_csv, tmp_path, capsys):
    out = tmp_path / "run"
    code = distillery_cli.main(
        [
            "run",
            "--data",
            str(reviews_csv),
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
            "20",
            "--batch-size",
            "8",
            "--speed-rows",
            "8",
            "--out",
            str(out),
            "--learning-curve",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    for line in (
        "teacher accuracy",
        "student accuracy",
        "agreement",
        "Cohen's κ",
        "retention",
        "student speed-up",
        "report:",
    ):
        assert line in printed
    # A random tiny teacher on 8 test rows: not clearly above the majority class, and the run says so.
    assert "WARNING: teacher: accuracy" in printed and "not clearly above the majority baseline" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    for part in ("teacher", "student"):
        assert {"accuracy", "macro_f1", "ece", "rows_per_s"} <= set(metrics[part])
    assert {"agreement", "kappa", "retention"} <= set(metrics)
    assert json.loads((out / "annotations" / "manifest.json").read_text())["rows"] == 40, (
        "a user's file is annotated whole by default"
    )
    ci = metrics["student"]["ci"]["accuracy"]
    assert ci[0] <= metrics["student"]["accuracy"] <= ci[1] and any(
        w.startswith("teacher:") for w in metrics["warnings"]
    )
    curve = metrics["learning_curve"]
    n_train = 40 - metrics["rows"]
    assert [p["train_rows"] for p in curve] == [n_train // 4, n_train // 2, n_train] and all(
        0 <= p["agreement"] <= 1 for p in curve
    )
    assert (
        "## Learning curve" in (out / "report.md").read_text()
        and f"| {n_train // 4} |" in (out / "report.md").read_text()
    )
    assert 0 <= metrics["student"]["accuracy"] <= 1 and metrics["rows"] == sum(
        metrics["teacher"]["per_class"][k]["support"] for k in ("negative", "positive")
    )
    report = (out / "report.md").read_text()
    assert "## Headline" in report and "confusion_student_vs_gold.png" in report
    assert (out / "confusion_student_vs_teacher.png").stat().st_size > 1000
    # Reliability: teacher and student, confidence against accuracy, and the student's fitted temperature.
    assert "reliability.png" in report and (out / "reliability.png").stat().st_size > 1000
    points = metrics["student"]["reliability"]
    assert sum(p["rows"] for p in points) == metrics["rows"] and all(0 <= p["confidence"] <= 1 for p in points)
    assert json.loads((out / "student" / "distillery_student.json").read_text())["temperature"] > 0

    # The student is a plain Hugging Face classifier with our label names.
    clf = pipeline("text-classification", model=str(out / "student"), device="cpu")
    assert clf("I love this movie")[0]["label"] in {"negative", "positive"}
    saved = yaml.safe_load((out / "student" / "distillery_config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["student_model"] == str(tiny_roberta)
    log = [json.loads(line) for line in (out / "student" / "train_log.jsonl").read_text().splitlines()]
    assert {"kd", "ce", "loss"} <= set(log[0]) and any("val_accuracy" in r for r in log)


def test_run_without_gold_labels_reports_agreement_only(tiny_llama, tiny_roberta, tmp_path, capsys):
    from conftest import make_rows

    path = tmp_path / "unlabelled.jsonl"
    make_rows(30).drop(columns="sentiment").rename(columns={"review": "text"}).to_json(
        path, orient="records", lines=True
    )
    out = tmp_path / "run"
    code = distillery_cli.main(
        [
            "run",
            "--data",
            str(path),
            "--labels",
            "negative,positive",
            "--teacher",
            str(tiny_llama),
            "--student-model",
            str(tiny_roberta),
            "--device",
            "cpu",
            "--speed-rows",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["accuracy"] is None and metrics["retention"] is None
    assert 0 <= metrics["agreement"] <= 1
    assert "No gold labels" in (out / "report.md").read_text()


def test_review_import_and_rerun_recalibrates_retrains_and_reports_the_review(
    tiny_llama, tiny_roberta, tmp_path, capsys
):
    """A user without gold: run, review 100 rows, import the person's answers, run again. The rerun
    asks the teacher nothing, calibrates on the reviewed rows, trains on the person's labels where
    they exist, and the report estimates accuracy from the random part with intervals."""
    import pandas as pd
    from conftest import make_rows

    rows = make_rows(200).rename(columns={"review": "text"}).assign(id=[f"t{i}" for i in range(200)])
    person = dict(zip(rows["id"], rows["sentiment"]))
    path = tmp_path / "unlabelled.csv"
    rows.drop(columns="sentiment").to_csv(path, index=False)
    out = tmp_path / "run"
    args = [
        "run",
        "--data",
        str(path),
        "--id-column",
        "id",
        "--labels",
        "negative,positive",
        "--teacher",
        str(tiny_llama),
        "--student-model",
        str(tiny_roberta),
        "--device",
        "cpu",
        "--speed-rows",
        "0",
        "--epochs",
        "1",
        "--min-steps",
        "5",
        "--out",
        str(out),
    ]
    assert distillery_cli.main(args) == 0
    assert (
        distillery_cli.main(
            ["review", "--out", str(out), "--review-rows", "100", "--random-share", "0.4", "--device", "cpu"]
        )
        == 0
    )
    sheet = pd.read_csv(out / "review" / "round-01" / "queue.csv", dtype=str, keep_default_na=False)
    sheet["label"], sheet["annotator"] = sheet["id"].map(person), "me"
    sheet.to_csv(tmp_path / "answers.csv", index=False)
    assert distillery_cli.main(["review", "--out", str(out), "--import", str(tmp_path / "answers.csv")]) == 0
    chunks_before = {
        p.name: pd.read_csv(p)[["raw_logprob_negative", "raw_logprob_positive"]]
        for p in (out / "annotations").glob("part-*.csv")
    }
    capsys.readouterr()
    assert distillery_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "0 to annotate" in printed and "calibration reviewed (auto: 100 reviewed rows)" in printed
    assert "60 rows take their hard label from the review" in printed
    assert "teacher acc (review)" in printed and "on 40 rows" in printed
    manifest = json.loads((out / "annotations" / "manifest.json").read_text())
    assert manifest["calibration"]["mode"] == "reviewed" and manifest["calibration"]["fitted_on"] == 100
    for name, raw in chunks_before.items():  # recalibrated from the stored raw log-probs, which stay as they were
        assert pd.read_csv(out / "annotations" / name)[raw.columns].equals(raw)
    metrics = json.loads((out / "metrics.json").read_text())
    review = metrics["review"]
    assert review["random_rows"] == 40 and review["doubtful_rows"] == 60
    teacher = review["random"]["teacher"]
    assert teacher["low"] <= teacher["estimate"] <= teacher["high"] and teacher["rows"] == 40
    assert review["teacher_errors_found"] == sum(sheet["label"] != sheet["teacher_label"])
    assert "## Human review" in (out / "report.md").read_text() and "found **" in (out / "report.md").read_text()
    assert json.loads((out / "student" / "train_summary.json").read_text())["reviewed_hard_labels"] == 60
