"""What leaves the machine: header values and keys parsed and redacted (the run folder and the
terminal are checked against a real server in test_hosted_unit.py); no absolute local path in a
model card or a report; each student's numbers are its own."""

import json

import pytest
import torch
import yaml
from conftest import make_rows

from distillery import cli as distillery_cli
from distillery.annotate.config import AnnotateConfig
from distillery.core.errors import UserError
from distillery.core.rundir import write_text
from distillery.core.secrets import parse_headers, redacted

HEADER_SECRET = "hdr-7f3a9c1e5b2d4806"  # neither looks like a known key format: found by value, not by pattern
KEY_SECRET = "key-0b1d2f3a4c5e6978"


def test_headers_are_split_as_http_splits_them():
    assert parse_headers(["api-key: sk-abc", "X-Org:acme", " X-Trace :  a:b:c "]) == {
        "api-key": "sk-abc",
        "X-Org": "acme",
        "X-Trace": "a:b:c",
    }
    assert parse_headers([]) == {}


@pytest.mark.parametrize(
    "entry", ["api-key sk-secret-value", ": sk-secret-value", "api key: sk-secret-value", "api-key:   "]
)
def test_a_malformed_header_names_the_form_and_not_the_value(entry):
    with pytest.raises(UserError, match="expected 'Name: value' entries") as err:
        AnnotateConfig(backend="openai", settings={"extra_headers": ["X-Ok: 1", entry]})
    assert "entry 2 of 2" in str(err.value) and "sk-secret-value" not in str(err.value)


def test_the_client_sends_the_header_value_without_the_space(tmp_path):
    pytest.importorskip("openai")
    from distillery.annotate import load_task
    from distillery.annotate.backends import build_teacher

    cfg = AnnotateConfig(
        backend="openai",
        out=str(tmp_path),
        settings={
            "base_url": "http://127.0.0.1:9/v1",
            "api_key_env": "none",
            "extra_headers": [f"api-key: {HEADER_SECRET}"],
        },
    )
    client = build_teacher(cfg, load_task("sentiment-binary"))._client()
    assert client.default_headers["api-key"] == HEADER_SECRET  # was " hdr-..." (the space after the colon)


def test_redacted_keeps_header_names_and_drops_every_secret_value():
    cfg = AnnotateConfig(
        backend="openai",
        settings={
            "teacher": "gpt-4o-mini",
            "base_url": f"https://user:{KEY_SECRET}@llm.example/v1?api_key={KEY_SECRET}&x=1",
            "extra_headers": [f"api-key: {HEADER_SECRET}", f"Authorization: Bearer {KEY_SECRET}"],
        },
    )
    original = cfg.flat()  # what annotate records in its manifest and config.yaml
    safe = redacted({"config": original, "note": f"Bearer {KEY_SECRET}", "token": KEY_SECRET, "hf": "hf_" + "a" * 30})
    text = json.dumps(safe)
    assert HEADER_SECRET not in text and KEY_SECRET not in text and "hf_aaaa" not in text
    assert safe["config"]["extra_headers"] == ["api-key: <redacted>", "Authorization: <redacted>"]
    assert safe["config"]["base_url"] == "https://<redacted>@llm.example/v1?api_key=<redacted>&x=1"
    assert safe["config"]["teacher"] == "gpt-4o-mini" and safe["config"]["api_key_env"] == "OPENAI_API_KEY"
    assert original["extra_headers"][0].endswith(HEADER_SECRET), "a copy: the config itself is untouched"
    assert AnnotateConfig.from_flat(safe["config"], strict=False).settings.extra_headers == [
        "api-key: <redacted>",
        "Authorization: <redacted>",
    ]  # evaluate rebuilds it


def test_a_key_passed_as_the_variable_name_is_refused_without_showing_it():
    with pytest.raises(UserError, match="--api-key-env: expected the NAME of an environment variable") as err:
        AnnotateConfig(backend="openai", settings={"api_key_env": f"sk-{KEY_SECRET}"})
    assert KEY_SECRET not in str(err.value)


# ---- shared outputs: model card and report --------------------------------------------------------------


def _constant_student(path, tiny_roberta, label: int):
    """A tiny encoder student that always answers ``label`` (a saved Distillery student)."""
    from transformers import AutoTokenizer, RobertaForSequenceClassification

    model = RobertaForSequenceClassification.from_pretrained(tiny_roberta)
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    with torch.no_grad():
        model.classifier.out_proj.weight.zero_()
        model.classifier.out_proj.bias.copy_(torch.tensor([5.0, -5.0] if label == 0 else [-5.0, 5.0]))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_roberta).save_pretrained(path)
    write_text(
        path / "distillery_student.json", json.dumps({"student": "encoder", "labels": ["negative", "positive"]})
    )  # as distill does: its own
    run = path.parents[1] / "run"  # what distill records, with the machine's absolute paths
    (path / "distillery_config.yaml").write_text(
        yaml.safe_dump({"out": str(run), "student": "encoder", "student_model": str(tiny_roberta)})
    )


@pytest.fixture(scope="module")
def two_students(tiny_llama, tiny_roberta, tmp_path_factory):
    """A run whose data is an absolute path, and two students in folders both named 'student'
    (one always says negative, one always positive), evaluated together."""
    root = tmp_path_factory.mktemp("shared")
    data = root / "home" / "me" / "reviews.csv"
    data.parent.mkdir(parents=True)
    rows = make_rows(48)
    rows.loc[rows.index % 4 == 1, "sentiment"] = "positive"  # 3:1, so the two students' accuracies differ
    rows.to_csv(data, index=False)
    run = root / "run"
    assert (
        distillery_cli.main(
            [
                "annotate",
                "--data",
                str(data),
                "--text-column",
                "review",
                "--label-column",
                "sentiment",
                "--labels",
                "negative,positive",
                "--teacher",
                str(tiny_llama),
                "--device",
                "cpu",
                "--test-fraction",
                "0.5",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    for name, label in (("a", 0), ("b", 1)):
        (root / name / "student").mkdir(parents=True)
        _constant_student(root / name / "student", tiny_roberta, label)
    students = f"{root / 'a' / 'student'},{root / 'b' / 'student'}"
    assert (
        distillery_cli.main(
            ["evaluate", "--out", str(run), "--students", students, "--speed-rows", "0", "--device", "cpu"]
        )
        == 0
    )
    return root, run


def test_two_students_named_alike_keep_their_own_numbers(two_students):
    from distillery.annotate import read_annotations

    root, run = two_students
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["students"]) == ["a/student", "b/student"]
    frame, _ = read_annotations(run / "annotations")
    test = frame[(frame["split"] == "test") & (frame["error_type"] == "")]
    shares = {"a": float((test["gold"] == "negative").mean()), "b": float((test["gold"] == "positive").mean())}
    agree = {
        "a": float((test["teacher_label"] == "negative").mean()),
        "b": float((test["teacher_label"] == "positive").mean()),
    }
    assert shares["a"] != shares["b"], "the check below could not tell the students apart"
    for name in ("a", "b"):
        own = metrics["students"][f"{name}/student"]
        recorded = json.loads((root / name / "student" / "distillery_student.json").read_text())["evaluation"]
        assert own["accuracy"] == pytest.approx(shares[name]) and recorded["accuracy"] == pytest.approx(shares[name])
        assert own["agreement"] == pytest.approx(agree[name]) and recorded["agreement"] == pytest.approx(agree[name])
    report = (run / "report.md").read_text()
    assert "| a/student |" in report and "| b/student |" in report


def test_card_and_report_name_files_not_the_machines_paths(two_students, tmp_path_factory):
    root, run = two_students
    base = str(tmp_path_factory.getbasetemp())  # every path of this test session lies under it: data, run, models
    card = (root / "a" / "student" / "README.md").read_text()
    report = (run / "report.md").read_text()
    assert "`reviews.csv`" in card, "the card names its data set by the file's name"
    assert "/home/me" not in card and base not in card
    assert "/home/me" not in report and base not in report
    front = yaml.safe_load(card.split("---\n")[1])
    assert "base_model" not in front or not str(front["base_model"]).startswith("/")
