"""The review queue (issue #18): which rows it picks, the files it writes (read by the real
label-studio-sdk and argilla packages), the import of their exports, and what annotate, distill
and evaluate do with the human labels."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import stop_server
from servers import wait_until_up

from distillery.annotate.calibration import calibrate_chunks, resolve_mode
from distillery.annotate.chunks import ChunkStore
from distillery.core.annotations import read_annotations
from distillery.core.errors import UserError
from distillery.core.reviewed import read_queue, read_reviewed, reviewed_labels
from distillery.evaluation.metrics import stratified_accuracy
from distillery.review import ReviewConfig, label_config, review
from distillery.review.queue import stratified_sample

LABELS = ["negative", "positive"]


def _run(root: Path, n_train: int = 120, n_test: int = 80, seed: int = 0) -> Path:
    """A finished annotation run written by the real chunk store (no teacher asked): a teacher that
    leans positive (raw log-probs shifted by +1.2 towards positive), 70% negative gold labels, and
    a margin that says how sure it is. Returns the run folder."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_test):
        gold = "positive" if rng.random() < 0.3 else "negative"
        signal = rng.normal(1.5 if gold == "positive" else -1.5, 1.5)
        raw = np.array([-signal / 2, signal / 2 + 1.2])
        raw = raw - np.logaddexp.reduce(raw)
        rows.append(
            {
                "id": f"r{i:03d}",
                "text": f"row {i} {'good' if gold == 'positive' else 'bad'}",
                "gold": gold,
                "split": "train" if i < n_train else "test",
                "teacher_label": LABELS[int(raw.argmax())],
                "logprob_negative": raw[0],
                "logprob_positive": raw[1],
                "raw_logprob_negative": raw[0],
                "raw_logprob_positive": raw[1],
                "label_mass": 0.9,
                "flags": "",
                "teacher": "synthetic",
                "prompt_hash": "0",
                "error_type": "",
                "error_message": "",
            }
        )
    frame = pd.DataFrame(rows)
    store = ChunkStore(
        root / "annotations",
        {"teacher": "synthetic"},
        {
            "config": {},
            "task": {"name": "sentiment-binary"},
            "labels": LABELS,
            "teacher": "synthetic",
            "prompt_hash": "0",
        },
    )
    for index, start in enumerate(range(0, len(frame), 100)):  # chunks of 100 rows, as a real run writes them
        store.write(index, frame.iloc[start : start + 100].reset_index(drop=True))
    calibrate_chunks(store, LABELS, "none", None)
    return root


def _gold(run: Path) -> dict[str, str]:
    frame, _ = read_annotations(run / "annotations")
    return dict(zip(frame["id"], frame["gold"]))


def test_queue_parts_strata_and_a_second_round_without_repeats(tmp_path):
    run = _run(tmp_path)
    here = review(ReviewConfig(out=str(run), review_rows=40, random_share=0.5, device="cpu"))
    queue = read_queue(run)
    frame, _ = read_annotations(run / "annotations")
    split = dict(zip(frame["id"], frame["split"]))
    random, doubtful = queue[queue["part"] == "random"], queue[queue["part"] == "doubtful"]
    assert len(random) == 20 and len(doubtful) == 20
    assert {split[i] for i in random["id"]} == {"test"} and {split[i] for i in doubtful["id"]} == {"train"}
    # Proportional allocation: each teacher label's share of the random part is its share of the test rows (±1 row).
    test = frame[frame["split"] == "test"]
    for lab in LABELS:
        expected = (test["teacher_label"] == lab).mean() * 20
        assert abs((random["teacher_label"] == lab).sum() - expected) <= 1
    # Doubtful rows are the training rows of smallest margin (no student here: the margin alone).
    train = frame[frame["split"] == "train"]
    p = np.exp(train[["logprob_negative", "logprob_positive"]].to_numpy(float))
    margins = np.abs(p[:, 1] - p[:, 0])
    assert doubtful["margin"].max() <= np.sort(margins)[19] + 1e-9
    assert len(pd.read_csv(here / "queue.csv")) == 40
    review(ReviewConfig(out=str(run), review_rows=40, device="cpu"))
    queue = read_queue(run)
    assert len(queue) == 80 and queue["id"].is_unique and set(queue["round"]) == {1, 2}


def test_stratified_sample_is_proportional():
    strata = pd.Series(["a"] * 70 + ["b"] * 25 + ["c"] * 5)
    picked = stratified_sample(strata, 20, np.random.default_rng(0))
    assert len(set(picked)) == 20
    assert strata[picked].value_counts().to_dict() == {"a": 14, "b": 5, "c": 1}


def test_label_studio_files_pass_the_sdks_own_checks(tmp_path):
    from label_studio_sdk.label_interface import LabelInterface

    run = _run(tmp_path)
    here = review(ReviewConfig(out=str(run), review_rows=10, device="cpu"))
    interface = LabelInterface((run / "review" / "label_config.xml").read_text())
    assert interface.get_control("label").labels == LABELS
    tasks = json.loads((here / "labelstudio.json").read_text())
    assert len(tasks) == 10
    for task in tasks:
        assert interface.validate_task({"data": task["data"]})
        assert interface.validate_prediction(task["predictions"][0], return_errors=True) == []
        assert 0.5 <= task["predictions"][0]["score"] <= 1.0
    assert interface.validate_prediction(
        {"result": [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["maybe"]}}]},
        return_errors=True,
    )  # the check can fail
    assert LabelInterface(label_config(['say "hi"', "b"])).get_control("label").labels == ['say "hi"', "b"]


def test_argilla_records_read_back_as_argilla_records(tmp_path):
    import argilla as rg

    run = _run(tmp_path)
    here = review(ReviewConfig(out=str(run), review_rows=10, device="cpu"))
    queue = read_queue(run).set_index("id")
    for data in json.loads((here / "argilla.json").read_text()):
        record = rg.Record.from_dict(data)
        assert record.fields["text"] and record.id in queue.index
        assert record.suggestions["label"].value == queue.loc[record.id, "teacher_label"]
        assert record.suggestions["label"].score == pytest.approx(queue.loc[record.id, "teacher_score"])


def _label_studio_export(tasks: list[dict], answer) -> list[dict]:
    """What Label Studio's JSON export holds after a person answered: each task with an annotation
    made of the SDK's own region and Annotation model."""
    from label_studio_sdk.label_interface import LabelInterface
    from label_studio_sdk.types import Annotation

    control = LabelInterface(label_config(LABELS)).get_control("label")
    out = []
    for n, task in enumerate(tasks):
        label = answer(task["data"]["distillery_id"])
        made = Annotation(
            id=n,
            result=[json.loads(control.label([label]).to_json())],
            completed_by=7,
            created_at=datetime(2026, 11, 29, 10, n % 60, tzinfo=timezone.utc),
            was_cancelled=False,
        )
        out.append(
            {
                "id": n + 1,
                "data": task["data"],
                "annotations": [made.model_dump(mode="json", exclude_none=True)],
                "predictions": task["predictions"],
            }
        )
    return out


def test_label_studio_round_trip_writes_the_overlay_and_never_the_chunks(tmp_path):
    run = _run(tmp_path)
    chunk = run / "annotations" / "part-00000.csv"
    before = chunk.read_bytes()
    gold = _gold(run)
    here = review(ReviewConfig(out=str(run), review_rows=20, device="cpu"))
    export = _label_studio_export(json.loads((here / "labelstudio.json").read_text()), gold.get)
    export[0]["annotations"].append(
        {
            **export[0]["annotations"][0],
            "was_cancelled": True,
            "created_at": "2027-01-01T00:00:00Z",
            "result": [{**export[0]["annotations"][0]["result"][0], "value": {"choices": ["positive"]}}],
        }
    )
    (tmp_path / "export.json").write_text(json.dumps(export))
    review(ReviewConfig(out=str(run), import_file=str(tmp_path / "export.json")))
    reviewed = read_reviewed(run)
    assert len(reviewed) == 20 and all(
        gold[i] == lab for i, lab in zip(reviewed["id"], reviewed["label"])
    )  # the cancelled answer is not taken
    assert set(reviewed["annotator"]) == {"7"} and reviewed["labelled_at"].str.startswith("2026-11-29").all()
    assert set(reviewed["source"]) == {"export.json"}
    assert chunk.read_bytes() == before


def test_argilla_exports_nested_and_flat_drafts_left_out_where_the_export_says(tmp_path):
    """The flat export carries each response's status: a draft is not an answer. The nested one
    (records.to_json, Dataset.to_disk) drops the status in argilla 2.x: every response there counts."""
    import argilla as rg
    from argilla.records._io import GenericIO

    run = _run(tmp_path)
    gold = _gold(run)
    here = review(ReviewConfig(out=str(run), review_rows=10, device="cpu"))
    person = uuid.uuid4()
    records = []
    for n, data in enumerate(json.loads((here / "argilla.json").read_text())):
        record = rg.Record.from_dict(data)
        status = "draft" if n == 0 else "submitted"
        records.append(
            rg.Record(
                id=record.id,
                fields=record.fields,
                suggestions=list(record.suggestions),
                responses=[rg.Response("label", gold[record.id], user_id=person, status=status)],
            )
        )
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(GenericIO.to_list(records, flatten=True), default=str))
    review(ReviewConfig(out=str(run), import_file=str(flat)))
    reviewed = read_reviewed(run)
    assert (
        len(reviewed) == 9 and records[0].id not in set(reviewed["id"]) and set(reviewed["annotator"]) == {str(person)}
    )
    nested = tmp_path / "records.json"
    nested.write_text(json.dumps(GenericIO.to_list(records, flatten=False), default=str))
    review(ReviewConfig(out=str(run), import_file=str(nested)))
    assert len(read_reviewed(run)) == 10 and reviewed_labels(run) == {i: gold[i] for i in reviewed_labels(run)}


def test_a_bad_label_or_a_foreign_row_stops_the_import_and_writes_nothing(tmp_path):
    run = _run(tmp_path)
    here = review(ReviewConfig(out=str(run), review_rows=10, device="cpu"))
    sheet = pd.read_csv(here / "queue.csv", dtype=str, keep_default_na=False)
    sheet["label"] = "negative"
    sheet.loc[3, "label"] = "Negative"
    sheet.to_csv(tmp_path / "answers.csv", index=False)
    with pytest.raises(
        UserError, match=rf"row '{sheet.loc[3, 'id']}' has the label 'Negative'; expected one of negative, positive"
    ):
        review(ReviewConfig(out=str(run), import_file=str(tmp_path / "answers.csv")))
    assert read_reviewed(run).empty
    sheet.loc[3, "label"], sheet.loc[4, "id"] = "positive", "elsewhere-1"
    sheet.to_csv(tmp_path / "answers.csv", index=False)
    with pytest.raises(UserError, match="row 'elsewhere-1' is not a row of"):
        review(ReviewConfig(out=str(run), import_file=str(tmp_path / "answers.csv")))
    assert read_reviewed(run).empty
    (tmp_path / "other.json").write_text(json.dumps([{"title": "x"}]))
    with pytest.raises(UserError, match="expected a Label Studio export"):
        review(ReviewConfig(out=str(run), import_file=str(tmp_path / "other.json")))


def test_a_newer_answer_replaces_the_older_one(tmp_path):
    run = _run(tmp_path)
    here = review(ReviewConfig(out=str(run), review_rows=6, device="cpu"))
    sheet = pd.read_csv(here / "queue.csv", dtype=str, keep_default_na=False).assign(label="negative")
    sheet.loc[4:, "label"] = ""  # not answered yet
    sheet.to_csv(tmp_path / "a.csv", index=False)
    review(ReviewConfig(out=str(run), import_file=str(tmp_path / "a.csv")))
    assert len(read_reviewed(run)) == 4
    sheet["label"] = "positive"
    sheet.to_csv(tmp_path / "b.csv", index=False)
    review(ReviewConfig(out=str(run), import_file=str(tmp_path / "b.csv")))
    reviewed = read_reviewed(run)
    assert len(reviewed) == 6 and set(reviewed["label"]) == {"positive"} and reviewed["id"].is_unique


def _import_gold(run: Path, ids) -> None:
    gold = _gold(run)
    pd.DataFrame({"id": list(ids), "label": [gold[i] for i in ids]}).to_csv(run / "answers.csv", index=False)
    review(ReviewConfig(out=str(run), import_file=str(run / "answers.csv")))


def test_reviewed_calibration_refits_from_raw_log_probs_and_beats_the_biased_teacher(tmp_path):
    run = _run(tmp_path, n_train=300, n_test=300)
    review(ReviewConfig(out=str(run), review_rows=200, device="cpu"))
    _import_gold(run, read_queue(run)["id"])
    frame, manifest = read_annotations(run / "annotations")
    reviewed = reviewed_labels(run, frame["id"])
    assert (
        resolve_mode("auto", 0, 2, False, len(reviewed)) == "reviewed"
        and resolve_mode("auto", 0, 2, False, 49) == "content-free"
    )
    test = frame["split"] == "test"
    before = (frame.loc[test, "teacher_label"] == frame.loc[test, "gold"]).mean()
    record = calibrate_chunks(
        ChunkStore(run / "annotations", manifest["fingerprint"], {}), LABELS, "reviewed", None, reviewed=reviewed
    )
    frame, manifest = read_annotations(run / "annotations")
    after = (frame.loc[test, "teacher_label"] == frame.loc[test, "gold"]).mean()
    assert record["mode"] == "reviewed" and record["fitted_on"] == 200 and manifest["calibration"]["reviewed"]
    assert after > before + 0.03, (
        f"calibrating on the reviewed rows should undo the teacher's lean: {before:.3f} -> {after:.3f}"
    )
    assert np.allclose(
        frame["raw_logprob_negative"].astype(float), frame["raw_logprob_negative"].astype(float)
    )  # raw columns kept


def test_calibrate_reviewed_without_answers_is_a_clear_error(tmp_path):
    from distillery.annotate.calibration import fit_calibration

    with pytest.raises(UserError, match="--calibrate reviewed: expected human labels"):
        fit_calibration("reviewed", np.zeros((5, 2)), None, np.zeros((0, 2)), np.zeros(0, dtype=int))


def test_distill_takes_the_human_label_where_there_is_one(tmp_path):
    from distillery.distill import DistillConfig
    from distillery.distill.data import load_training_rows

    run = _run(tmp_path)
    frame, _ = read_annotations(run / "annotations")
    train = frame[frame["split"] == "train"]
    wrong = train[train["teacher_label"] != train["gold"]]["id"].tolist()[:5]
    assert len(wrong) == 5
    _import_gold(run, wrong)
    rows = load_training_rows(DistillConfig(out=str(run), val_fraction=0.0))
    hard = dict(zip(rows.train["id"], rows.train["hard"]))
    gold = _gold(run)
    assert rows.n_reviewed == 5 and all(hard[i] == LABELS.index(gold[i]) for i in wrong)
    teacher = load_training_rows(DistillConfig(out=str(run), val_fraction=0.0, hard_labels="teacher"))
    assert teacher.n_reviewed == 0 and all(
        dict(zip(teacher.train["id"], teacher.train["hard"]))[i] != LABELS.index(gold[i]) for i in wrong
    )


def test_stratified_interval_holds_the_truth_in_about_95_percent_of_draws():
    rng = np.random.default_rng(0)
    strata = np.array(["a"] * 600 + ["b"] * 300 + ["c"] * 100)
    correct = np.concatenate([rng.random(600) < 0.9, rng.random(300) < 0.6, rng.random(100) < 0.3])
    truth = correct.mean()
    held = 0
    for draw in range(200):
        picked = stratified_sample(pd.Series(strata), 100, np.random.default_rng([1, draw]))
        est = stratified_accuracy(correct[picked], strata[picked], strata)
        held += est["low"] <= truth <= est["high"]
        assert est["rows"] == 100 and est["low"] < est["estimate"] < est["high"]
    assert 0.90 <= held / 200 <= 0.99, f"coverage {held / 200}"
    everything = stratified_accuracy(correct, strata, strata)  # the whole population: no doubt left
    assert everything["estimate"] == pytest.approx(truth) and everything["high"] - everything["low"] == pytest.approx(
        0.0
    )


def _label_studio_bin() -> Path | None:
    """The label-studio server: $LABEL_STUDIO_BIN, or the venv `make install-label-studio` makes
    (the server pins its own Django stack, so it lives apart from Distillery's packages)."""
    import os
    import shutil

    found = os.environ.get("LABEL_STUDIO_BIN") or shutil.which("label-studio")
    local = Path(__file__).resolve().parents[1] / ".venv-label-studio" / "bin" / "label-studio"
    return Path(found) if found else local if local.is_file() else None


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(420)
def test_round_trip_through_a_real_label_studio_server(tmp_path):
    """Create a project on a real Label Studio server on loopback, import the queue, answer it
    through the API as a person would, export (JSON and JSON-MIN), import into Distillery."""
    import os
    import socket
    import subprocess

    from label_studio_sdk import LabelStudio

    binary = _label_studio_bin()
    if binary is None:
        pytest.skip("label-studio is not installed (make install-label-studio puts it in .venv-label-studio)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = uuid.uuid4().hex
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls"),
        "LABEL_STUDIO_USERNAME": "person@example.com",
        "LABEL_STUDIO_PASSWORD": uuid.uuid4().hex,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(binary), "start", "--host", "127.0.0.1", "--port", str(port), "--no-browser"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_until_up("label-studio", server, f"http://127.0.0.1:{port}/api/version", tmp_path / "server.log", 300)
        except RuntimeError as err:
            pytest.fail(str(err), pytrace=False)
        run = _run(tmp_path / "run")
        gold = _gold(run)
        here = review(ReviewConfig(out=str(run), review_rows=12, device="cpu"))
        client = LabelStudio(base_url=f"http://127.0.0.1:{port}", api_key=token)
        project = client.projects.create(
            title="distillery review", label_config=(run / "review" / "label_config.xml").read_text()
        )
        client.projects.import_tasks(id=project.id, request=json.loads((here / "labelstudio.json").read_text()))
        tasks = list(client.tasks.list(project=project.id))
        assert len(tasks) == 12 and all(t.data["distillery_id"] in gold for t in tasks)
        for task in tasks[:10]:  # the person answers 10 of the 12
            client.annotations.create(
                id=task.id,
                result=[
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": [gold[task.data["distillery_id"]]]},
                    }
                ],
            )
        for kind in ("JSON", "JSON_MIN"):
            export = tmp_path / f"export-{kind}.json"
            export.write_bytes(b"".join(client.projects.exports.download_sync(id=project.id, export_type=kind)))
            review(ReviewConfig(out=str(run), import_file=str(export)))
            reviewed = read_reviewed(run)
            assert len(reviewed) == 10, kind
            assert all(gold[i] == lab for i, lab in zip(reviewed["id"], reviewed["label"]))
            assert (reviewed["labelled_at"] != "").all() and (reviewed["annotator"] != "").all()
    finally:
        stop_server(server)
        log.close()


def test_spreadsheet_separators_and_broken_files_are_one_line_errors_or_read(tmp_path):
    run = _run(tmp_path)
    gold = _gold(run)
    here = review(ReviewConfig(out=str(run), review_rows=6, device="cpu"))
    sheet = pd.read_csv(here / "queue.csv", dtype=str, keep_default_na=False)
    sheet["label"] = sheet["id"].map(gold)
    sheet.to_csv(tmp_path / "semicolon.csv", index=False, sep=";")  # what a European spreadsheet saves
    review(ReviewConfig(out=str(run), import_file=str(tmp_path / "semicolon.csv")))
    assert len(read_reviewed(run)) == 6
    (tmp_path / "empty.csv").write_text("")
    broken = {"empty.csv": "could not read it", "folder": "is a folder"}
    (tmp_path / "folder").mkdir()
    (tmp_path / "min.json").write_text(
        json.dumps([{"distillery_id": sheet["id"][0], "label": "negative"}, {"label": "positive"}])
    )
    broken["min.json"] = r"JSON-MIN\) export, but an item lacks or garbles .distillery_id"
    (tmp_path / "mixed.json").write_text(json.dumps([{"data": {"distillery_id": sheet["id"][0]}}, "text"]))
    broken["mixed.json"] = "item 2 is a str"
    for name, message in broken.items():
        with pytest.raises(UserError, match=message):
            review(ReviewConfig(out=str(run), import_file=str(tmp_path / name)))
    assert len(read_reviewed(run)) == 6


def test_an_older_export_never_replaces_a_newer_answer_and_an_unchanged_one_keeps_its_annotator(tmp_path):
    run = _run(tmp_path)
    here = review(ReviewConfig(out=str(run), review_rows=2, device="cpu"))
    row, other = pd.read_csv(here / "queue.csv", dtype=str)["id"][:2]
    new = pd.DataFrame(
        {
            "id": [row, other],
            "label": ["negative", "positive"],
            "annotator": ["ann", "bob"],
            "labelled_at": ["2026-11-30T09:00:00", "2026-11-30T09:00:00"],
        }
    )
    new.to_csv(tmp_path / "new.csv", index=False)
    review(ReviewConfig(out=str(run), import_file=str(tmp_path / "new.csv")))
    older = new.assign(label=["positive", "positive"], annotator=["", ""], labelled_at=["2026-11-29T10:00:00", ""])
    older.to_csv(tmp_path / "old.csv", index=False)
    review(ReviewConfig(out=str(run), import_file=str(tmp_path / "old.csv")))
    reviewed = read_reviewed(run).set_index("id")
    assert reviewed.at[row, "label"] == "negative" and reviewed.at[row, "annotator"] == "ann"  # the newer answer stays
    assert (
        reviewed.at[other, "label"] == "positive" and reviewed.at[other, "annotator"] == "bob"
    )  # same answer: the line as it was


def test_review_of_a_missing_run_writes_nothing_and_a_wrong_student_is_refused(tmp_path):
    with pytest.raises(UserError, match="expected a run folder with annotations"):
        review(ReviewConfig(out=str(tmp_path / "nowhere" / "deep")))
    assert not (tmp_path / "nowhere").exists()
    run = _run(tmp_path / "run")
    with pytest.raises(UserError, match="--student: expected a student folder"):
        review(ReviewConfig(out=str(run), student=str(tmp_path / "typo")))
    assert not (run / "review" / "queue.csv").exists()


def test_rows_labelled_outside_a_queue_count_and_are_never_queued_again(tmp_path):
    from distillery.evaluation import EvaluateConfig
    from distillery.evaluation.evaluate import eval_rows
    from distillery.evaluation.review import review_metrics

    run = _run(tmp_path)
    frame, manifest = read_annotations(run / "annotations")
    labelled = frame["id"][:150].tolist()
    _import_gold(run, labelled)  # a person labelled rows before any queue
    review(ReviewConfig(out=str(run), review_rows=40, device="cpu"))
    assert not set(read_queue(run)["id"]) & set(labelled)
    metrics = review_metrics(run, eval_rows(EvaluateConfig(out=str(run)), frame, manifest), {}, "cpu", 32)
    gold = _gold(run)
    assert metrics["other_rows"] == 150 and metrics["reviewed_rows"] == 150 and metrics["random_rows"] == 0
    assert metrics["teacher_errors_found"] == sum(
        frame.set_index("id").loc[labelled, "teacher_label"] != pd.Series(gold)[labelled]
    )
