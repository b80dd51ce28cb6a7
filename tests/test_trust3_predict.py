"""Issue #37 (Trust 3), predict: a student is told by its weights' content, not their size and time; a
row of megabytes is cut before it is tokenized; an empty id is one line in every command that reads
--id-column; and --defer on a student that evaluate found no threshold for defers every row.

Tiny random encoder students (and their ONNX exports) and a few dozen rows: each test runs in seconds."""

from __future__ import annotations

import importlib
import json
import os
import re
import resource
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from conftest import make_rows
from test_faults_predict import _predict
from tiny import build_roberta

from distillery import cli as distillery_cli
from distillery.core.inputs import InputError, iter_texts, load_rows
from distillery.student import load_student

MAX_TOKENS = 64  # the students' window (their tiny position table holds 300)
BIG_ROW_CHARS = 5_000_000


def _student(folder, seed: int):
    """An encoder student with random weights (``seed``), labels negative/positive, a 64-token window."""
    from transformers import AutoTokenizer, RobertaForSequenceClassification

    build_roberta(folder / "base", seed=seed)
    model = RobertaForSequenceClassification.from_pretrained(folder / "base")
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    path = folder / "student"
    model.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(folder / "base")
    tok.model_max_length = MAX_TOKENS
    tok.save_pretrained(path)
    (path / "distillery_student.json").write_text(
        json.dumps({"student": "encoder", "labels": ["negative", "positive"]})
    )
    shutil.rmtree(folder / "base")
    return path


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """Two students of the same size with different weights, each as PyTorch and as an ONNX export:
    ``{"pytorch": (a, b), "onnx": (a, b)}``."""
    root = tmp_path_factory.mktemp("trust3")
    made = {"pytorch": [], "onnx": []}
    for name, seed in (("a", 0), ("b", 1)):
        path = _student(root / name, seed)
        onnx = root / name / "student-onnx"
        code = distillery_cli.main(["export", "--student", str(path), "--onnx-dir", str(onnx), "--variant", "fp32"])
        assert code == 0
        made["pytorch"].append(path)
        made["onnx"].append(onnx)
    return {kind: tuple(paths) for kind, paths in made.items()}


WEIGHTS = {"pytorch": "model.safetensors", "onnx": "model.onnx"}


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.csv"
    make_rows(30).assign(rid=[f"r{i}" for i in range(30)]).to_csv(path, index=False)
    return path


def _swap_weights(student, other, name: str) -> None:
    """Put ``other``'s weight file in ``student``'s place, keeping its size and modification time."""
    before = (student / name).stat()
    assert (other / name).stat().st_size == before.st_size, "the two students' weights are the same size"
    (student / name).write_bytes((other / name).read_bytes())
    os.utime(student / name, ns=(before.st_atime_ns, before.st_mtime_ns))


# Case 5: a resumed predict with another student's weights (same size, same mtime) is refused.


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
@pytest.mark.parametrize("when", ["stopped", "complete"])
def test_case5_weights_swapped_with_size_and_mtime_kept_are_another_student(
    students, kind, when, rows, tmp_path, monkeypatch, capsys
):
    a, b = students[kind]
    student = tmp_path / "student"
    shutil.copytree(a, student)
    out = tmp_path / "preds.csv"
    if when == "stopped":
        predict_mod = importlib.import_module("distillery.serve.predict")
        real, calls = predict_mod.prediction_frame, []

        def crash_on_third(*args):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt  # parts 0 and 1 are on disk, predicted by a's weights
            return real(*args)

        monkeypatch.setattr(predict_mod, "prediction_frame", crash_on_third)
        assert _predict(student, rows, out) == 130
        monkeypatch.setattr(predict_mod, "prediction_frame", real)
    else:
        assert _predict(student, rows, out) == 0
    _swap_weights(student, b, WEIGHTS[kind])
    capsys.readouterr()
    assert _predict(student, rows, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different weights" in err and "--restart-predictions" in err, err
    assert _predict(student, rows, out, "--restart-predictions") == 0
    texts = pd.read_csv(rows)["review"].tolist()
    want = load_student(b).probabilities(texts)
    got = pd.read_csv(out)[["p_negative", "p_positive"]].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg="every row comes from the student now in the folder")


def test_case5_each_weight_file_is_hashed_once_per_run(students, rows, tmp_path, monkeypatch):
    predict_mod = importlib.import_module("distillery.serve.predict")
    real, hashed = predict_mod.sha256_file, []
    monkeypatch.setattr(predict_mod, "sha256_file", lambda path: (hashed.append(os.path.basename(path)), real(path))[1])
    assert _predict(students["pytorch"][0], rows, tmp_path / "p.csv") == 0
    assert hashed.count("model.safetensors") == 1, hashed


# Case 14: a row of megabytes is cut to what the student reads before it is tokenized.


def _spy_tokenizer(monkeypatch) -> list[int]:
    """The longest text each call of any student's tokenizer was given (recorded while the test runs)."""
    from transformers import PreTrainedTokenizerBase

    seen, real = [], PreTrainedTokenizerBase.__call__

    def spy(self, text=None, *args, **kwargs):
        texts = [text] if isinstance(text, str) else list(text or [])
        seen.append(max((len(t) for t in texts), default=0))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy)
    return seen


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
@pytest.mark.parametrize("shape", ["words", "one word"])
def test_case14_a_row_of_megabytes_is_cut_before_tokenizing(students, kind, shape, tmp_path, monkeypatch):
    unit = "great film " if shape == "words" else "greatfilm"
    big = (unit * (BIG_ROW_CHARS // len(unit) + 1))[:BIG_ROW_CHARS]
    data = tmp_path / "rows.csv"
    pd.DataFrame({"review": ["I love this movie", big, "awful acting"]}).to_csv(data, index=False)
    seen = _spy_tokenizer(monkeypatch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    assert _predict(students[kind][0], data, tmp_path / "p.csv") == 0
    took = time.perf_counter() - started
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    print(f"case14 {kind} {shape}: {took:.2f} s, peak RSS +{grew:.0f} MiB, longest text tokenized {max(seen):,}")
    assert max(seen) < 100_000, f"the tokenizer was given a text of {max(seen):,} characters"
    assert took < 5, f"predict took {took:.1f} s on one row of {BIG_ROW_CHARS:,} characters"
    assert grew < 400, f"predict's peak memory grew by {grew:.0f} MiB on one row of {BIG_ROW_CHARS:,} characters"
    out = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert out["text"].tolist()[1] == big, "the output keeps the whole row"


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_case14_the_cut_row_gets_the_probabilities_of_the_whole_row(students, kind, tmp_path):
    """The student truncates to its window anyway: cutting the characters first changes nothing it reads."""
    texts = ["I love this movie", "great film " * 20_000, "a" * 3_000 + " terrible" * 1_000, "x" * 50_000]
    data = tmp_path / "rows.csv"
    pd.DataFrame({"review": texts}).to_csv(data, index=False)
    assert _predict(students[kind][0], data, tmp_path / "p.csv") == 0
    got = pd.read_csv(tmp_path / "p.csv")[["p_negative", "p_positive"]].to_numpy()
    np.testing.assert_allclose(got, load_student(students[kind][0]).probabilities(texts), atol=1e-5)


# Case 16: an empty or missing id is one line naming the rows, the column and the fix, in every reader.

ID_DEFECTS = {
    "empty cell": ("csv", ["r0", "", "r2", "r3"]),
    "whitespace": ("csv", ["r0", "r1", "   ", "r3"]),
    "null": ("jsonl", ["r0", None, "r2", "r3"]),
    "missing key": ("jsonl", ["r0", "r1", "r2", "MISSING"]),
}


def _id_file(tmp_path, defect: str):
    suffix, ids = ID_DEFECTS[defect]
    texts = ["I love this movie", "I hate this film", "great fun", "awful acting"]
    labels = ["positive", "negative", "positive", "negative"]
    path = tmp_path / f"rows.{suffix}"
    if suffix == "csv":
        pd.DataFrame({"rid": ids, "review": texts, "sentiment": labels}).to_csv(path, index=False)
    else:
        records = [
            {"review": t, "sentiment": lab, **({} if i == "MISSING" else {"rid": i})}
            for i, t, lab in zip(ids, texts, labels)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    bad_row = next(k for k, i in enumerate(ids) if i is None or i == "MISSING" or not str(i).strip())
    return path, bad_row


def _assert_names_the_id_defect(err: str, bad_row: int, suffix: str) -> None:
    line = bad_row + (2 if suffix == "csv" else 1)  # a CSV's first line is its header
    assert len(err.strip().splitlines()) == 1, err
    assert "'rid'" in err and "--id-column" in err and "Traceback" not in err, err
    assert re.search(rf"lines? {line}\b", err), err


@pytest.mark.parametrize("defect", list(ID_DEFECTS))
def test_case16_an_empty_id_is_one_line_in_the_readers(defect, tmp_path):
    path, bad_row = _id_file(tmp_path, defect)
    suffix = ID_DEFECTS[defect][0]
    with pytest.raises(InputError) as err:
        list(iter_texts(str(path), "review", "rid", chunk_rows=2))
    _assert_names_the_id_defect(str(err.value), bad_row, suffix)
    from distillery.annotate.config import AnnotateConfig

    cfg = AnnotateConfig(data=str(path), text_column="review", id_column="rid", labels="negative,positive")
    with pytest.raises(InputError) as err:
        load_rows(cfg, ["negative", "positive"])
    _assert_names_the_id_defect(str(err.value), bad_row, suffix)


@pytest.mark.parametrize("defect", list(ID_DEFECTS))
def test_case16_an_empty_id_is_one_line_through_the_cli(defect, students, tiny_llama, tmp_path, capsys):
    path, bad_row = _id_file(tmp_path, defect)
    suffix = ID_DEFECTS[defect][0]
    capsys.readouterr()
    assert _predict(students["pytorch"][0], path, tmp_path / "p.csv", "--id-column", "rid") == 2
    _assert_names_the_id_defect(capsys.readouterr().err, bad_row, suffix)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.csv.parts").exists()
    code = distillery_cli.main(
        [
            "annotate",
            "--data",
            str(path),
            "--text-column",
            "review",
            "--id-column",
            "rid",
            "--teacher",
            str(tiny_llama),
            "--labels",
            "negative,positive",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    _assert_names_the_id_defect(capsys.readouterr().err, bad_row, suffix)


def test_case16_duplicate_ids_are_one_line_naming_both_rows(tmp_path):
    from distillery.annotate.config import AnnotateConfig

    path = tmp_path / "rows.csv"
    pd.DataFrame({"rid": ["r0", "r1", "r0"], "review": ["great fun", "awful acting", "I love this movie"]}).to_csv(
        path, index=False
    )
    cfg = AnnotateConfig(data=str(path), text_column="review", id_column="rid", labels="negative,positive")
    with pytest.raises(InputError) as err:
        load_rows(cfg, ["negative", "positive"])
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "'r0'" in message and "'rid'" in message, message
    assert "lines 2, 4" in message and "--id-column" in message, message
    pd.DataFrame({"rid": ["a", "a", "b", "b", "c"], "review": ["x", "y", "z", "w", "v"]}).to_csv(path, index=False)
    with pytest.raises(InputError) as err:
        load_rows(cfg, ["negative", "positive"])
    assert "'a' 2 times (file lines 2, 3); 'b' 2 times (file lines 4, 5)" in str(err.value), err.value


# Case 17: --defer on a student whose evaluation found no passing threshold defers every row.


def _evaluated(student, tmp_path, target: float):
    """A copy of ``student`` recorded by evaluate's own record_evaluation, with a coverage curve from
    answer_or_defer on 40 rows where the student agrees with the teacher on half: no threshold can
    pass ``target`` (0: none was asked for)."""
    from distillery.core.rundir import record_files
    from distillery.evaluation.evaluate import answer_or_defer, record_evaluation

    copy = tmp_path / student.name
    shutil.copytree(student, copy)
    record_files(copy, [p.name for p in copy.iterdir() if p.is_file()])  # the fixture saved them by hand
    probs = np.tile([[0.6, 0.4]], (40, 1))
    teacher = np.array([0, 1] * 20)
    m = {"defer": answer_or_defer(probs, teacher, None, target), "accuracy": 0.5, "agreement": 0.5, "ci": {}}
    metrics = {
        "split": "test",
        "rows": 40,
        "majority_accuracy": 0.5,
        "teacher": {"accuracy": None, "macro_f1": None},
    }
    record_evaluation(copy, m, metrics, "cpu")
    return copy


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_case17_defer_with_no_passing_threshold_defers_every_row(students, kind, rows, tmp_path, capsys):
    student = _evaluated(students[kind][0], tmp_path, 0.9)
    assert json.loads((student / "distillery_student.json").read_text())["defer"] == {"threshold": None, "target": 0.9}
    capsys.readouterr()
    assert _predict(student, rows, tmp_path / "p.csv", "--defer") == 0
    said = capsys.readouterr()
    lines = [line for line in (said.out + said.err).splitlines() if "every row is deferred" in line]
    assert len(lines) == 1 and "evaluate found no confidence threshold" in lines[0], said
    assert ">= 0.9 " in lines[0], lines
    frame = pd.read_csv(tmp_path / "p.csv")
    assert len(frame) == 30 and frame["deferred"].all()


def test_case17_defer_on_a_student_never_evaluated_or_evaluated_without_a_target_says_how(
    students, rows, tmp_path, capsys
):
    assert _predict(students["pytorch"][0], rows, tmp_path / "p.csv", "--defer") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "distillery evaluate" in err, err
    untargeted = _evaluated(students["pytorch"][0], tmp_path, 0.0)
    assert _predict(untargeted, rows, tmp_path / "p.csv", "--defer") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--target-agreement 0" in err and "--defer-threshold" in err, err
    assert not (tmp_path / "p.csv").exists()


def test_case17_the_card_says_every_row_is_deferred_or_that_no_target_was_asked(students, tmp_path):
    from distillery.student.card import card_data, render_card

    card = render_card(card_data(_evaluated(students["pytorch"][0], tmp_path / "a", 0.9)))
    assert "`distillery predict --defer` defers every row" in card and "No threshold recorded" not in card
    card = render_card(card_data(_evaluated(students["pytorch"][0], tmp_path / "b", 0.0)))
    assert "without a target" in card and "defers every row" not in card


def test_case17_an_export_keeps_every_row_deferred_when_no_threshold_passes():
    from distillery.serve.export import _defer

    probs = np.tile([[0.6, 0.4]], (40, 1))
    rows = {"teacher": np.array([0, 1] * 20)}
    none_passed = {"threshold": None, "target": 0.9}
    assert _defer(none_passed, probs, rows) == none_passed  # the same for every variant
    picked = {"threshold": 0.55, "target": 0.9, "coverage": 1.0, "agreement": 0.5, "lower_bound": 0.4}
    assert _defer(picked, probs, rows) == {"threshold": None, "target": 0.9, "recomputed_on": 40}


def test_a_long_row_never_reaches_past_the_models_positions_when_the_tokenizer_sets_no_limit(
    students, tmp_path, capsys
):
    """The tokenizer says nothing (its limit unset: 512 assumed), the model holds 300 positions: the
    student reads what its position table holds, and a 4,200-character row is one row, not a crash."""
    student = tmp_path / "student"
    shutil.copytree(students["pytorch"][0], student)
    config = json.loads((student / "tokenizer_config.json").read_text())
    config.pop("model_max_length", None)
    (student / "tokenizer_config.json").write_text(json.dumps(config))
    data = tmp_path / "rows.csv"
    pd.DataFrame({"review": ["this is great " * 300, "short"]}).to_csv(data, index=False)
    assert _predict(student, data, tmp_path / "p.csv") == 0, capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "p.csv")) == 2
    # Its ONNX export has no model config: the window travels in the tokenizer, and the row is one row there too.
    onnx = tmp_path / "onnx"
    assert distillery_cli.main(["export", "--student", str(student), "--onnx-dir", str(onnx), "--variant", "fp32"]) == 0
    assert json.loads((onnx / "tokenizer_config.json").read_text())["model_max_length"] == 298  # 300 - RoBERTa's 2
    assert _predict(onnx, data, tmp_path / "q.csv") == 0, capsys.readouterr().err
