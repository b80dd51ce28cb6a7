"""What Distillery guarantees when runs are killed, run twice at once, or meet edited inputs,
lost manifests, torn chunks, foreign files and changed settings (README, "What Distillery
guarantees"). Real processes (``python -m distillery``), real files, kill -9 at random
points while the process is writing; every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_rows
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from distillery import cli as distillery_cli
from distillery.annotate import read_annotations
from distillery.core.lock import locked
from distillery.distill.checkpoint import find_checkpoint

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 120  # the longest any test here waits on a process
KILLS = {"annotate": 7, "distill": 7, "predict": 6, "active": 6}  # 26 kill points
LANDED = {"annotate": 6, "distill": 6, "predict": 5, "active": 4}  # at least 21 must hit a running process


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> subprocess.CompletedProcess:
    """One ``distillery`` command in a fresh process, to the end (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "distillery", *map(str, args)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S * 2,
    )


def _snapshot(folder: Path, pattern: str) -> dict:
    """Name -> (size, mtime) of the files matching ``pattern`` under ``folder``: a change means the process wrote."""
    for _ in range(20):  # a folder removed while glob walks it (a temporary one): look again
        stats = {}
        try:
            for path in folder.glob(pattern) if folder.exists() else []:
                with contextlib.suppress(FileNotFoundError):  # renamed away while we look
                    stats[str(path)] = (path.stat().st_size, path.stat().st_mtime_ns)
            return stats
        except FileNotFoundError:
            continue
    return stats


def kill_while_writing(
    args: list, watch: Path, pattern: str, rng: random.Random, kills: int, pause: float, args_after=None, wait_s=WAIT_S
) -> int:
    """Start the command ``kills`` times; each time wait until it writes a file matching
    ``pattern`` under ``watch`` (its real work has begun), then kill -9 it after a random pause
    of up to ``pause`` s. Returns the kills that hit a live process (a run that finished first
    is not counted)."""
    hits = 0
    for i in range(kills):
        command = args_after() if args_after and i else args
        proc = subprocess.Popen(
            [sys.executable, "-m", "distillery", *map(str, command)],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        before, deadline = _snapshot(watch, pattern), time.monotonic() + wait_s
        try:
            while proc.poll() is None and _snapshot(watch, pattern) == before:
                assert time.monotonic() < deadline, f"no write under {watch} within {wait_s} s"
                time.sleep(0.02)
            time.sleep(rng.uniform(0, pause))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                hits += 1
            proc.wait(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode not in (0, -signal.SIGKILL):
            pytest.fail(f"run {i} failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    return hits


@pytest.fixture(scope="module")
def rows_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "reviews.csv"
    make_rows(240).to_csv(path, index=False)
    return path


def _annotate_args(tiny_llama, data: Path, out: Path, *extra) -> list:
    return [
        "annotate",
        "--data",
        data,
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--teacher",
        tiny_llama,
        "--device",
        "cpu",
        "--chunk-size",
        "4",
        "--out",
        out,
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(tiny_llama, rows_csv, tmp_path_factory) -> pd.DataFrame:
    """The same annotation, never interrupted."""
    out = tmp_path_factory.mktemp("reference")
    done = cli(*_annotate_args(tiny_llama, rows_csv, out))
    assert done.returncode == 0, done.stderr
    return read_annotations(out / "annotations")[0].set_index("id").sort_index()


def _same_annotations(out: Path, reference: pd.DataFrame) -> None:
    frame = read_annotations(out / "annotations")[0]
    assert frame["id"].is_unique and sorted(frame["id"]) == sorted(reference.index), "every row exactly once"
    frame = frame.set_index("id").sort_index()
    assert (frame["teacher_label"] == reference["teacher_label"]).all()
    pd.testing.assert_frame_equal(frame.filter(like="logprob_"), reference.filter(like="logprob_"), atol=1e-5, rtol=0)


def test_annotate_killed_at_random_points_resumes_every_row_exactly_once(tiny_llama, rows_csv, reference, tmp_path):
    out = tmp_path / "run"
    args = _annotate_args(tiny_llama, rows_csv, out)
    hits = kill_while_writing(args, out / "annotations", "part-*.csv", random.Random(1), KILLS["annotate"], pause=0.5)
    print(f"annotate: {hits} of {KILLS['annotate']} kills landed while it was running")
    assert hits >= LANDED["annotate"], f"only {hits} kills landed while annotate was running"
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    _same_annotations(out, reference)
    left = [p.name for p in (out / "annotations").iterdir() if "distillery-tmp" in p.name]
    assert not left, f"a killed run's temporary files are left: {left}"


def test_two_annotate_runs_at_once_never_mix_rows(tiny_llama, rows_csv, reference, tmp_path):
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distillery", *map(str, _annotate_args(tiny_llama, rows_csv, out, *limit))],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for limit in (["--limit", "100"], ["--limit", "0"])
    ]
    results = [(p.wait(timeout=WAIT_S * 2), p.stderr.read()) for p in procs]
    assert all(code in (0, 2) for code, _ in results), results
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        if code == 2:  # refused: it started while the other held the folder, or found the other's finished run
            assert "another distillery process (pid" in err or "different run" in err, err
    frame = read_annotations(out / "annotations")[0]
    assert frame["id"].is_unique, "no row twice"
    assert len(frame) in (100, 240)


def test_a_second_process_on_a_locked_folder_stops_at_once_naming_the_first(tiny_llama, rows_csv, tmp_path):
    out = tmp_path / "run"
    with locked(out, "annotate"):
        started = time.monotonic()
        done = cli(*_annotate_args(tiny_llama, rows_csv, out))
    assert done.returncode == 2 and time.monotonic() - started < WAIT_S
    assert f"another distillery process (pid {os.getpid()}, 'distillery annotate'" in done.stderr
    assert not (out / "annotations").exists(), "the refused run wrote nothing"


def test_a_deleted_manifest_is_rebuilt_from_the_chunks(tiny_llama, rows_csv, reference, tmp_path):
    out = tmp_path / "run"
    assert cli(*_annotate_args(tiny_llama, rows_csv, out, "--limit", "40")).returncode == 0
    before = read_annotations(out / "annotations")[0]
    (out / "annotations" / "manifest.json").unlink()
    done = cli(*_annotate_args(tiny_llama, rows_csv, out, "--limit", "40"))
    assert done.returncode == 0, done.stderr
    assert "40 already done, 0 to annotate" in done.stdout
    after, manifest = read_annotations(out / "annotations")
    assert manifest["rows"] == 40 and len(manifest["chunks"]) == 10
    pd.testing.assert_frame_equal(after, before)


def test_torn_or_edited_chunks_stop_the_run_naming_the_file(tiny_llama, rows_csv, tmp_path):
    out = tmp_path / "run"
    assert cli(*_annotate_args(tiny_llama, rows_csv, out, "--limit", "40")).returncode == 0
    chunk = out / "annotations" / "part-00001.csv"
    whole = chunk.read_text()
    for torn in (
        whole[: whole.index("\n", whole.index("\n") + 1) + 1],  # cut at a row boundary: one row left
        whole[: whole.index("\n") + 20],
    ):  # cut inside a quoted field
        chunk.write_text(torn)
        for args in (
            _annotate_args(tiny_llama, rows_csv, out, "--limit", "40"),
            ["distill", "--out", out, "--device", "cpu"],
        ):
            done = cli(*args)
            assert done.returncode == 2 and "part-00001.csv" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
    chunk.write_text(whole.replace("positive", "negative"))  # an edit of a label
    done = cli(*_annotate_args(tiny_llama, rows_csv, out, "--limit", "40"))
    assert done.returncode == 2 and "part-00001.csv does not match its checksum" in done.stderr


def test_an_edited_input_stops_the_rerun_until_restart_annotations(tiny_llama, tmp_path):
    data = tmp_path / "rows.csv"
    rows = make_rows(12).assign(rid=[f"r{i}" for i in range(12)])
    rows.to_csv(data, index=False)
    out = tmp_path / "run"
    args = _annotate_args(tiny_llama, data, out, "--id-column", "rid", "--test-fraction", "0")
    assert cli(*args).returncode == 0
    rows.loc[5, "review"] = "an edited text"
    rows.loc[6, "sentiment"] = "negative" if rows.loc[6, "sentiment"] == "positive" else "positive"
    rows.to_csv(data, index=False)
    done = cli(*args)
    assert done.returncode == 2 and "the input changed" in done.stderr and "--restart-annotations" in done.stderr
    done = cli(*args, "--restart-annotations")
    assert done.returncode == 0, done.stderr
    frame = read_annotations(out / "annotations")[0].set_index("id")
    assert frame.loc["r5", "text"] == "an edited text" and frame.loc["r6", "gold"] == rows.loc[6, "sentiment"]
    for changed in (make_rows(16), make_rows(8)):  # grown by a whole chunk, then shrunk: no chunk is edited
        changed.assign(rid=[f"r{i}" for i in range(len(changed))]).to_csv(data, index=False)
        done = cli(*args)
        assert done.returncode == 2 and "--restart-annotations" in done.stderr, done.stderr
        assert "12 rows then, 16 now" in done.stderr or "shrank" in done.stderr, done.stderr
    assert len(read_annotations(out / "annotations")[0]) == 12, "the run's rows are kept as they were"


@pytest.fixture(scope="module")
def annotated(tiny_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("annotated")
    make_rows(64).to_csv(out / "rows.csv", index=False)
    done = cli(*_annotate_args(tiny_llama, out / "rows.csv", out, "--test-fraction", "0.1"))
    assert done.returncode == 0, done.stderr
    return out


def _distill_args(annotated: Path, tiny_roberta, output: Path, *extra) -> list:
    return [
        "distill",
        "--out",
        annotated,
        "--student",
        output,
        "--student-model",
        tiny_roberta,
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--epochs",
        "8",
        "--min-steps",
        "0",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "1",
        *extra,
    ]


def _log(student: Path) -> list[dict]:
    return [json.loads(line) for line in (student / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def student(annotated, tiny_roberta) -> Path:
    """A distilled tiny student, trained without interruption."""
    output = annotated / "reference-student"
    done = cli(*_distill_args(annotated, tiny_roberta, output))
    assert done.returncode == 0, done.stderr
    return output


def test_distill_killed_while_checkpointing_resumes_the_same_loss_curve(annotated, tiny_roberta, student, tmp_path):
    output = tmp_path / "student"
    args = _distill_args(annotated, tiny_roberta, output)
    resume = lambda: args + (["--resume"] if find_checkpoint(output) else [])  # noqa: E731
    hits = kill_while_writing(
        args, output, "checkpoint*/progress.json", random.Random(2), KILLS["distill"], pause=0.4, args_after=resume
    )
    print(f"distill: {hits} of {KILLS['distill']} kills landed while it was running")
    assert hits >= LANDED["distill"], f"only {hits} kills landed while distill was running"
    done = cli(*resume())
    assert done.returncode == 0, done.stderr
    want, got = _log(student), _log(output)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-5)
    assert not any((output / name).exists() for name in ("checkpoint", "checkpoint.new", "checkpoint.old"))


def test_resume_refuses_other_settings_and_a_finished_run_says_so(annotated, tiny_roberta, tmp_path):
    output = tmp_path / "student"
    args = _distill_args(annotated, tiny_roberta, output)
    kill_while_writing(args, output, "checkpoint*/progress.json", random.Random(3), 1, pause=0.0)
    assert find_checkpoint(output) is not None
    done = cli(*args, "--resume", "--alpha", "0.8", "--temperature", "3")
    assert done.returncode == 2 and "alpha 0.5 there, 0.8 now" in done.stderr and "temperature" in done.stderr, (
        done.stderr
    )
    assert cli(*args, "--resume").returncode == 0
    done = cli(*args, "--resume")
    assert done.returncode == 0 and "nothing to resume" in done.stdout, done.stdout + done.stderr


@pytest.fixture(scope="module")
def predict_input(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("predict") / "new.csv"
    make_rows(400).to_csv(path, index=False)
    return path


def _predict_args(student: Path, data: Path, out: Path, *extra) -> list:
    return [
        "predict",
        "--student",
        student,
        "--data",
        data,
        "--text-column",
        "review",
        "--chunk-size",
        "10",
        "--predict-batch-size",
        "4",
        "--device",
        "cpu",
        "--predictions",
        out,
        *extra,
    ]


def test_predict_killed_at_random_points_writes_every_row_exactly_once(student, predict_input, tmp_path):
    whole = tmp_path / "whole.csv"
    assert cli(*_predict_args(student, predict_input, whole)).returncode == 0
    out = tmp_path / "preds.csv"
    args = _predict_args(student, predict_input, out)
    hits = kill_while_writing(
        args, tmp_path / "preds.csv.parts", "part-*.csv", random.Random(4), KILLS["predict"], pause=0.3
    )
    print(f"predict: {hits} of {KILLS['predict']} kills landed while it was running")
    assert hits >= LANDED["predict"], f"only {hits} kills landed while predict was running"
    assert cli(*args).returncode == 0
    got, want = pd.read_csv(out, dtype=str, keep_default_na=False), pd.read_csv(whole, dtype=str, keep_default_na=False)
    assert got["id"].is_unique and len(got) == 400
    pd.testing.assert_frame_equal(got, want)


def test_predict_on_a_changed_input_stops_until_restart_predictions(student, tmp_path):
    data, out = tmp_path / "new.csv", tmp_path / "preds.csv"
    make_rows(20).to_csv(data, index=False)
    assert cli(*_predict_args(student, data, out)).returncode == 0
    make_rows(40).assign(review=lambda f: f["review"] + " (edited)").to_csv(data, index=False)
    done = cli(*_predict_args(student, data, out))
    assert done.returncode == 2 and "changed since" in done.stderr and "--restart-predictions" in done.stderr, (
        done.stderr
    )
    assert len(pd.read_csv(out)) == 20, "the old predictions are kept until the user says otherwise"
    assert cli(*_predict_args(student, data, out, "--restart-predictions")).returncode == 0
    got = pd.read_csv(out, keep_default_na=False)
    assert len(got) == 40 and got["text"].str.endswith("(edited)").all()


def test_no_stage_writes_over_a_users_own_files(annotated, student, tiny_roberta, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("report.md", "metrics.json", "README.md", "train_log.jsonl"):
        (mine / name).write_text(f"my own {name}\n")
    evaluate = [
        "evaluate",
        "--out",
        mine,
        "--annotations",
        annotated / "annotations",
        "--students",
        student,
        "--device",
        "cpu",
        "--speed-rows",
        "0",
    ]
    for args in (
        evaluate,
        _distill_args(annotated, tiny_roberta, mine),
        [*_distill_args(annotated, tiny_roberta, mine), "--overwrite"],
    ):
        done = cli(*args)
        assert done.returncode == 2 and "distillery did not write" in done.stderr, (
            done.stderr
        )  # --overwrite or not (issue #26)
        assert all(
            (mine / n).read_text() == f"my own {n}\n"
            for n in ("report.md", "metrics.json", "README.md", "train_log.jsonl")
        )
    (mine / "report.md").unlink()
    (mine / "metrics.json").unlink()
    done = cli(*evaluate)
    assert done.returncode == 0, done.stderr
    assert (mine / "report.md").read_text() != "my own report.md\n"
    assert cli(*evaluate).returncode == 0, "files distillery wrote are its own to replace"


def test_run_and_active_check_the_output_folder_before_the_first_teacher_call(
    tiny_llama, tiny_roberta, rows_csv, tmp_path
):
    out = tmp_path / "mine"
    (out / "student").mkdir(parents=True)
    (out / "student" / "NOTES.txt").write_text("my notes\n")
    run = [
        "run",
        "--data",
        rows_csv,
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--teacher",
        tiny_llama,
        "--student-model",
        tiny_roberta,
        "--device",
        "cpu",
        "--out",
        out,
    ]
    for args in (run, _active_args(tiny_llama, tiny_roberta, rows_csv, out)):
        done = cli(*args)
        assert done.returncode == 2 and "NOTES.txt" in done.stderr and "--overwrite" in done.stderr, done.stderr
        assert (out / "student" / "NOTES.txt").read_text() == "my notes\n"
        assert not (out / "annotations").exists(), "no teacher call was made"


def test_distill_runs_from_the_same_annotations_side_by_side(annotated, tiny_roberta, tmp_path):
    before = {p: p.read_bytes() for p in sorted((annotated / "annotations").rglob("*")) if p.is_file()}
    with locked(annotated, "annotate"):  # another process holds the run folder: distill only reads it
        done = cli(
            *_distill_args(annotated, tiny_roberta, tmp_path / "sweep", "--epochs", "1", "--checkpoint-every", "0")
        )
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "sweep" / "train_summary.json").read_text())  # a whole student, trained
    assert summary["steps"] >= 1 and (tmp_path / "sweep" / "distillery_student.json").is_file()
    after = {p: p.read_bytes() for p in sorted((annotated / "annotations").rglob("*")) if p.is_file()}
    assert after == before  # the annotations it read are as they were


def test_a_kill_while_the_student_is_saved_is_not_a_finished_run(annotated, tiny_roberta, tmp_path, monkeypatch):
    import distillery.distill.train as train_mod

    output = tmp_path / "student"
    args = [str(a) for a in _distill_args(annotated, tiny_roberta, output, "--epochs", "2")]
    assert distillery_cli.main(args) == 0
    real = train_mod.save_student

    def half_saved(model, tokenizer, out_dir, *rest):
        model.save_pretrained(out_dir)  # new weights in place, the rest of the folder still the first run's
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_student", half_saved)
    assert distillery_cli.main([*args, "--lr", "5e-2"]) == 130
    monkeypatch.setattr(train_mod, "save_student", real)
    assert not (output / "train_summary.json").exists() and not (output / "distillery_student.json").exists()
    assert (
        distillery_cli.main(
            [
                "predict",
                "--student",
                str(output),
                "--data",
                str(annotated / "rows.csv"),
                "--text-column",
                "review",
                "--predictions",
                str(tmp_path / "p.csv"),
            ]
        )
        == 2
    ), "a half-saved student is not served"
    done = cli(*args, "--lr", "5e-2", "--resume")
    assert done.returncode == 0 and "nothing to resume" not in done.stdout, done.stdout + done.stderr
    assert json.loads((output / "train_summary.json").read_text())["lr"] == 5e-2


def _active_args(tiny_llama, tiny_roberta, pool: Path, out: Path) -> list:
    return [
        "active",
        "--data",
        pool,
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--labels",
        "negative,positive",
        "--teacher",
        tiny_llama,
        "--student-model",
        tiny_roberta,
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
        out,
    ]


def test_active_killed_at_random_points_asks_about_every_row_once(tiny_llama, tiny_roberta, tmp_path):
    pool = tmp_path / "pool.csv"
    make_rows(80).to_csv(pool, index=False)
    out = tmp_path / "run"
    args = [
        *_active_args(tiny_llama, tiny_roberta, pool, out),
        "--budget",
        "60",
    ]  # 5 rounds: work left for every restart
    hits = kill_while_writing(args, out, "*/*.*", random.Random(5), KILLS["active"], pause=1.0)
    print(f"active: {hits} of {KILLS['active']} kills landed while it was running")
    assert hits >= LANDED["active"], f"only {hits} kills landed while active was running"
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    state = json.loads((out / "active" / "state.json").read_text())
    chosen = [s["id"] for s in state["selected"]]
    assert len(chosen) == 60 == len(set(chosen))
    frame = read_annotations(out / "annotations")[0]
    assert sorted(frame["id"]) == sorted(chosen), "every chosen row annotated exactly once"
    assert len((out / "active" / "rounds.jsonl").read_text().splitlines()) == 5


NASTY = [
    "a\rbare carriage return",
    "line\nbreak",
    "windows\r\nline",
    'say "hi", ok',
    "tab\there",
    ",",
    '"',
    "NA",
    "null",
    " padded ",
    "1e3",
    "007",
    "True",
    "émoji 🎉 ünïcödé",
    "\u2028separator",
    "#comment",
    "nul\x00byte",
]
texts = st.lists(
    st.one_of(st.sampled_from(NASTY), st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)),
    min_size=1,
    max_size=6,
    unique=True,
).filter(lambda ts: all(t.strip() for t in ts))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(texts=texts)
@example(texts=NASTY)  # every hard case at once, on every run
def test_any_text_survives_annotate_predict_and_only_deferred_byte_for_byte(texts, tiny_llama, student):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ids = [f"row-{i}" for i in range(len(texts))]
        data = tmp / "rows.jsonl"
        pd.DataFrame({"rid": ids, "text": texts}).to_json(data, orient="records", lines=True, force_ascii=False)
        quiet = ["--teacher", str(tiny_llama), "--device", "cpu", "--labels", "negative,positive"]
        assert (
            distillery_cli.main(
                ["annotate", "--data", str(data), "--id-column", "rid", "--out", str(tmp / "a"), *quiet]
            )
            == 0
        )
        annotated = read_annotations(tmp / "a" / "annotations")[0].set_index("id")
        assert annotated.loc[ids, "text"].tolist() == texts
        preds = tmp / "preds.csv"
        assert (
            distillery_cli.main(
                [
                    "predict",
                    "--student",
                    str(student),
                    "--data",
                    str(data),
                    "--id-column",
                    "rid",
                    "--device",
                    "cpu",
                    "--defer",
                    "--defer-threshold",
                    "1.0",
                    "--predictions",
                    str(preds),
                ]
            )
            == 0
        )
        got = pd.read_csv(preds, dtype=str, keep_default_na=False)
        assert got["id"].tolist() == ids and got["text"].tolist() == texts
        assert (
            distillery_cli.main(["annotate", "--data", str(preds), "--only-deferred", "--out", str(tmp / "d"), *quiet])
            == 0
        )
        merged = pd.read_csv(tmp / "d" / "merged.csv", dtype=str, keep_default_na=False)
        assert merged["id"].tolist() == ids and merged["text"].tolist() == texts
        assert (merged["source"] == "teacher").all()
        shutil.rmtree(tmp / "a")
