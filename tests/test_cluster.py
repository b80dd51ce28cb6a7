"""``--engine ray`` (issue #29) on a real local Ray cluster of two nodes (``ray.cluster_utils.Cluster``):
the chunks equal a local run's, every row exactly once through a worker killed with kill -9, a
driver killed and rerun, a failing row, a teacher that cannot load on one node, Ctrl-C and no Ray.
Every driver is a real ``distillery`` process; every wait is bounded; the module's teardown stops
the cluster and checks that no Ray process it started is left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_rows
from test_reliability import ROOT, WAIT_S, _annotate_args, _distill_args, _env, _log, kill_while_writing
from tiny import build_llama

from distillery.annotate import read_annotations

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
RAY_NAMES = ("raylet", "gcs_server", "ray::", "default_worker.py", "dashboard", "log_monitor", "runtime_env/agent")


def ray_processes() -> dict[int, str]:
    """pid -> command line of every Ray process on this machine (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(name in cmdline for name in RAY_NAMES):
                found[int(entry.name)] = cmdline
    return found


def wait_for(condition, what: str, seconds: float = WAIT_S):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.02)
    return value


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A Hugging Face cache holding a random Llama as the hub model ``distillery-test/slow-llama``."""
    cache = tmp_path_factory.mktemp("hub_cache")
    revision = "0" * 40
    model = cache / "models--distillery-test--slow-llama"  # slow enough that a kill lands between its chunks
    build_llama(model / "snapshots" / revision, hidden=256, layers=6)
    (model / "refs").mkdir()
    (model / "refs" / "main").write_text(revision)
    return cache


@pytest.fixture(scope="module")
def cluster(hub_cache, tmp_path_factory):
    """Two Ray nodes of 2 logical CPUs each. Only the head node's workers find the hub model in their
    cache (the second node's cache is empty, as on a machine the weights were never copied to)."""
    from ray.cluster_utils import Cluster

    before = set(ray_processes())
    offline = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    empty = tmp_path_factory.mktemp("empty_cache")
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "env_vars": {**offline, "HF_HUB_CACHE": str(hub_cache)}},
    )
    try:
        nodes.add_node(num_cpus=2, env_vars={**offline, "HF_HUB_CACHE": str(empty)})
        nodes.wait_for_nodes()
        yield nodes
    finally:
        nodes.shutdown()
        left = lambda: {p: c for p, c in ray_processes().items() if p not in before}  # noqa: E731
        deadline = time.monotonic() + 60
        while left() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left(), f"Ray processes left behind: {left()}"


@pytest.fixture(scope="module")
def slow_llama(tmp_path_factory) -> Path:
    """A wider random Llama: a chunk takes it long enough that a kill lands while a worker scores."""
    return build_llama(tmp_path_factory.mktemp("slow_llama"), hidden=256, layers=6)


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "reviews.csv"
    frame = make_rows(96)
    frame.loc[5, "review"] = "an endless review " * 40  # 720 characters: over --max-row-chars 400, a failing row
    frame.to_csv(path, index=False)
    return path


def cli(*args, timeout: float = WAIT_S * 2, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distillery", *map(str, args)],
        cwd=ROOT,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def args(teacher, data: Path, out: Path, *extra) -> list:
    return [*_annotate_args(teacher, data, out, "--chunk-size", "8", "--max-row-chars", "400"), *extra]


def on_ray(cluster, workers: int = 2) -> list:
    return ["--engine", "ray", "--ray-address", cluster.address, "--workers", str(workers)]


@pytest.fixture(scope="module")
def local_run(tiny_llama, rows, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    done = cli(*args(tiny_llama, rows, out))
    assert done.returncode == 0, done.stderr
    return out


def same_chunks(out: Path, reference: Path) -> None:
    """Every id exactly once; labels, log-probs (1e-5), errors and calibration as in ``reference``;
    nothing else in the run folder."""
    frame, manifest = read_annotations(out / "annotations")
    expected, expected_manifest = read_annotations(reference / "annotations")
    assert frame["id"].is_unique and sorted(frame["id"]) == sorted(expected["id"]), "every row exactly once"
    frame, expected = frame.set_index("id").sort_index(), expected.set_index("id").sort_index()
    assert (frame["teacher_label"] == expected["teacher_label"]).all()
    assert (frame["error_type"] == expected["error_type"]).all()
    pd.testing.assert_frame_equal(frame.filter(like="logprob_"), expected.filter(like="logprob_"), atol=1e-5, rtol=0)
    assert manifest["calibration"] == expected_manifest["calibration"]
    assert sorted(p.name for p in (out / "annotations").iterdir()) == sorted(
        p.name for p in (reference / "annotations").iterdir()
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_two_workers_on_two_nodes_write_the_local_runs_chunks(cluster, tiny_llama, rows, local_run, tmp_path):
    done = cli(*args(tiny_llama, rows, tmp_path / "run"), *on_ray(cluster))
    assert done.returncode == 0, done.stderr
    same_chunks(tmp_path / "run", local_run)
    frame = read_annotations(tmp_path / "run" / "annotations")[0]
    assert frame["error_type"].tolist().count("too_long") == 1, "the failing row is recorded, the job goes on"


def test_a_worker_killed_mid_chunk_has_its_chunk_scored_again_and_written_once(
    cluster, slow_llama, rows, tmp_path_factory, tmp_path
):
    reference = tmp_path_factory.mktemp("slow_local")
    assert cli(*args(slow_llama, rows, reference)).returncode == 0
    driver = subprocess.Popen(
        [sys.executable, "-m", "distillery", *map(str, args(slow_llama, rows, tmp_path / "run")), *on_ray(cluster)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:  # a worker process while it runs score(): Ray names it ray::TeacherWorker.score
        busy = lambda: [p for p, c in ray_processes().items() if c.startswith("ray::TeacherWorker.score")]  # noqa: E731
        victim = wait_for(busy, "a worker scoring a chunk", seconds=WAIT_S * 3)[0]
        os.kill(victim, signal.SIGKILL)
        output, _ = driver.communicate(timeout=WAIT_S * 2)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, output[-3000:]
    assert "a worker died" in output and "goes to another worker" in output
    same_chunks(tmp_path / "run", reference)


def test_a_driver_killed_at_random_points_resumes_every_row_exactly_once(
    cluster, tiny_llama, rows, local_run, tmp_path
):
    import random

    command = [*args(tiny_llama, rows, tmp_path / "run"), *on_ray(cluster)]
    hits = kill_while_writing(
        command, tmp_path / "run" / "annotations", "part-*.csv", random.Random(3), 3, pause=1.0, wait_s=WAIT_S * 3
    )
    assert hits >= 2, f"only {hits} of 3 kills landed while the driver ran"
    done = cli(*command)
    assert done.returncode == 0, done.stderr
    same_chunks(tmp_path / "run", local_run)


def test_a_worker_that_cannot_load_the_teacher_stops_the_run_naming_its_node(
    cluster, hub_cache, rows, tmp_path, monkeypatch
):
    import random

    # a first run on this machine (the hub model in its cache) is killed after its first chunks ...
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    command = args("distillery-test/slow-llama", rows, out)
    assert kill_while_writing(command, out / "annotations", "part-*.csv", random.Random(5), 1, pause=0.3) == 1
    kept = {p.name: p.read_bytes() for p in (out / "annotations").glob("part-*.csv")}
    assert 0 < len(kept) < 12
    # ... and the rerun on the cluster stops: the second node's cache lacks the model
    done = cli(*command, *on_ray(cluster))
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert "could not load the teacher distillery-test/slow-llama" in message and "node " in message, message
    assert "cached files" in message, message  # the cause, as the hub client gave it
    assert {p.name: p.read_bytes() for p in (out / "annotations").glob("part-*.csv")} == kept, "earlier chunks kept"


def test_ctrl_c_stops_the_workers(cluster, slow_llama, tmp_path):
    data = tmp_path / "many.csv"
    make_rows(800).to_csv(data, index=False)
    out = tmp_path / "run"  # 400 chunks of 2 rows: still running when Ctrl-C comes
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distillery",
            *map(str, args(slow_llama, data, out)),
            "--chunk-size",
            "2",
            *on_ray(cluster),
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C as at a terminal: a job started in the background (nohup cmd &) inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    workers = lambda: [p for p, c in ray_processes().items() if c.startswith("ray::TeacherWorker")]  # noqa: E731
    try:
        wait_for(lambda: list(out.glob("annotations/part-*.csv")), "a first chunk", seconds=WAIT_S * 3)
        assert workers(), "the run's workers"
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=WAIT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 130, output[-3000:]
    assert "interrupted" in output
    assert len(list(out.glob("annotations/part-*.csv"))) < 400, "Ctrl-C came while the run was going"
    wait_for(lambda: not workers(), "the workers gone after Ctrl-C", seconds=60)


def test_a_rerun_with_another_config_is_refused_as_on_one_machine(cluster, tiny_llama, rows, local_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(local_run, out)
    done = cli(*_annotate_args(tiny_llama, rows, out, "--chunk-size", "5", "--max-row-chars", "400"), *on_ray(cluster))
    assert done.returncode == 2 and "chunk_size" in done.stderr, done.stderr
    again = cli(*args(tiny_llama, rows, out), *on_ray(cluster))  # the same settings: nothing to do, nothing rewritten
    assert again.returncode == 0 and "0 to annotate" in again.stdout, again.stdout + again.stderr
    same_chunks(out, local_run)


def test_without_ray_the_engine_is_one_line_naming_the_extra(tiny_llama, rows, tmp_path):
    hidden = tmp_path / "no_ray"
    (hidden / "ray").mkdir(parents=True)  # an import of ray fails as where it is not installed
    (hidden / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**_env(), "PYTHONPATH": f"{hidden}{os.pathsep}{_env()['PYTHONPATH']}"}
    done = subprocess.run(
        [sys.executable, "-m", "distillery", *map(str, args(tiny_llama, rows, tmp_path / "run")), "--engine", "ray"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "distillery annotate: error: --engine ray needs Ray: pip install 'distillery[ray]'"
    ]
    assert not (tmp_path / "run").exists(), "nothing written"


# --- distill --engine ray: Ray Train's TorchTrainer over gloo -------------------------------------


@pytest.fixture(scope="module")
def trained_on(tiny_llama, tmp_path_factory) -> Path:
    """A run folder annotated by the tiny Llama on this machine: what the students train on."""
    out = tmp_path_factory.mktemp("annotated")
    make_rows(240).to_csv(out / "rows.csv", index=False)
    done = cli(*_annotate_args(tiny_llama, out / "rows.csv", out, "--test-fraction", "0.1"))
    assert done.returncode == 0, done.stderr
    return out


def distill_args(trained_on: Path, tiny_roberta, output: Path, *extra) -> list:
    return _distill_args(trained_on, tiny_roberta, output, "--epochs", "3", *extra)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def accelerate_student(trained_on, tiny_roberta) -> Path:
    """The same training in 2 CPU processes under torchrun, accelerate's multi-process path (what
    ``accelerate launch`` starts on GPUs; on CPUs it would need MPI): the reference curve."""
    output = trained_on / "accelerate-student"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "distillery",
            *map(str, distill_args(trained_on, tiny_roberta, output)),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S * 3,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((output / "train_summary.json").read_text())
    assert summary["processes"] == 2
    assert [r["step"] for r in _log(output)] == list(range(1, summary["steps"] + 1)), "every planned step ran"
    return output


def test_distill_on_two_ray_train_workers_follows_the_two_process_accelerate_curve(
    cluster, trained_on, tiny_roberta, accelerate_student, tmp_path
):
    output = tmp_path / "student"
    done = cli(*distill_args(trained_on, tiny_roberta, output), *on_ray(cluster), timeout=WAIT_S * 3)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    want, got = _log(accelerate_student), _log(output)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-4)
    summary, reference = (json.loads((s / "train_summary.json").read_text()) for s in (output, accelerate_student))
    timing = {"train_seconds", "train_rows_per_s", "peak_memory_bytes"}  # measured, not recorded settings
    assert {k: v for k, v in summary.items() if k not in timing} == {
        k: v for k, v in reference.items() if k not in timing
    }, "the student records what the accelerate run records"
    assert sorted(p.name for p in output.iterdir()) == sorted(p.name for p in accelerate_student.iterdir())


def test_a_killed_training_worker_stops_with_one_line_and_resume_goes_on(
    cluster, trained_on, tiny_roberta, accelerate_student, tmp_path
):
    output = tmp_path / "student"
    command = [sys.executable, "-m", "distillery", *map(str, distill_args(trained_on, tiny_roberta, output))]
    driver = subprocess.Popen(
        [*command, *on_ray(cluster)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: list(output.glob("checkpoint*/progress.json")), "a first checkpoint", seconds=WAIT_S * 3)
        trainers = [p for p, c in ray_processes().items() if c.startswith("ray::RayTrainWorker")]
        assert trainers, "a Ray Train worker process"
        os.kill(trainers[-1], signal.SIGKILL)
        _, errors = driver.communicate(timeout=WAIT_S * 2)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 2, errors[-3000:]
    line = errors.strip().splitlines()[-1]
    assert "training stopped" in line and "--resume" in line, line
    done = cli(*distill_args(trained_on, tiny_roberta, output), "--resume", *on_ray(cluster), timeout=WAIT_S * 3)
    assert done.returncode == 0, done.stderr[-3000:]
    want, got = _log(accelerate_student), _log(output)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-4)


def test_a_hosted_teacher_runs_on_the_workers_with_its_key_and_writes_the_local_chunks(
    cluster, chat_server, rows, tmp_path
):
    url, keys = chat_server
    secret = "key-5c2e8a1f7b3d9046"
    hosted = ["--backend", "openai", "--base-url", url, "--api-key-env", "DISTILLERY_TEST_KEY", "--teacher", "smollm2"]
    env = {**_env(), "DISTILLERY_TEST_KEY": secret}
    runs = {}
    for name, extra in (("local", []), ("ray", on_ray(cluster))):
        out = tmp_path / name
        done = cli(*args("smollm2", rows, out), *hosted, *extra, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert secret not in done.stdout + done.stderr
        runs[name] = out
    assert keys and set(keys) == {f"Bearer {secret}"}, "the workers had the key, by its variable's name"
    frame, expected = (read_annotations(runs[n] / "annotations")[0].set_index("id").sort_index() for n in runs)
    assert frame.index.is_unique and list(frame.index) == list(expected.index)
    pd.testing.assert_frame_equal(frame.filter(like="logprob_"), expected.filter(like="logprob_"), atol=1e-5, rtol=0)
    assert not list((runs["ray"] / "annotations").glob("request_cache*")), "the workers' cache is theirs, not --out's"
    for path in runs["ray"].rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
