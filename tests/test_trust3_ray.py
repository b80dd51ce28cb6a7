"""``--engine ray``'s trust (issue #37, cases 7, 10, 11, 12): every ``--ray-address`` form with nothing
there is one line at once; workers that cannot fit are one line at once; a hosted teacher's key reaches
the workers and no file of the Ray session holds it.

Every driver is a real ``distillery`` process in a session of its own, with ``RAY_TMPDIR`` in this test's
temporary folder: a Ray runtime it starts lives there, and what is left of it (found by that folder in its
command line) is killed by pid. A cluster a test starts is shut down by the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import make_rows
from test_cluster import ray_processes
from test_reliability import ROOT, _env

pytestmark = pytest.mark.integration
QUICK_S = 45  # a refusal that takes longer than this is not 'at once'


@pytest.fixture
def ray_tmp():
    """A short RAY_TMPDIR of this test's own (Ray's socket paths must stay under 107 characters);
    every Ray process whose command line names it is killed at the end, and the folder removed."""
    import shutil

    folder = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield folder
    for pid, cmdline in ray_processes().items():
        if folder in cmdline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(folder, ignore_errors=True)


def run(argv: list, env: dict, timeout: float = QUICK_S) -> tuple[int | None, str, str, float]:
    """``distillery *argv`` in a session of its own: (exit code or None if still running at ``timeout``,
    stdout, stderr, seconds). A driver still running is killed with its process group."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillery", *map(str, argv)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    return code, out, err, time.monotonic() - started


def rows_csv(folder: Path) -> Path:
    path = folder / "rows.csv"
    make_rows(8).to_csv(path, index=False)
    return path


def annotate_argv(folder: Path, *extra) -> list:
    return [
        "annotate",
        "--data",
        rows_csv(folder),
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--teacher",
        "smollm2",
        "--device",
        "cpu",
        "--out",
        folder / "run",
        "--engine",
        "ray",
        *extra,
    ]


def distill_argv(folder: Path, *extra) -> list:
    return ["distill", "--out", folder / "run", "--device", "cpu", "--engine", "ray", *extra]


def one_line(code, err: str, seconds: float) -> str:
    assert code is not None, f"still running after {seconds:.0f} s"
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert seconds < QUICK_S, f"{seconds:.0f} s"
    return lines[0]


def no_client_env(tmp_path: Path, base: dict) -> dict:
    """``base`` with the Ray Client's dependency (grpc) hidden, as after a plain ``pip install ray``."""
    hidden = tmp_path / "no_grpc"
    (hidden / "grpc").mkdir(parents=True)
    (hidden / "grpc" / "__init__.py").write_text("raise ImportError('No module named grpc')\n")
    return {**base, "PYTHONPATH": f"{hidden}{os.pathsep}{base['PYTHONPATH']}"}


def client_installed() -> bool:
    try:
        import grpc  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["annotate", "distill"])
@pytest.mark.parametrize(
    "form", ["host-port", "auto, RAY_ADDRESS", "auto, nothing running", "ray-client missing", "ray-client"]
)
def test_every_ray_address_with_nothing_there_is_one_line_at_once(form, command, tmp_path, ray_tmp):
    env = {**_env(), "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    address, wants = {
        "host-port": ("127.0.0.1:1", ["127.0.0.1:1", "ray start --head", "empty"]),
        "auto, RAY_ADDRESS": ("auto", ["127.0.0.1:1", "RAY_ADDRESS", "ray start --head"]),
        "auto, nothing running": ("auto", ["auto", "ray start --head", "empty"]),
        "ray-client missing": ("ray://127.0.0.1:1", ["ray://127.0.0.1:1", "pip install", "ray[client]"]),
        "ray-client": ("ray://127.0.0.1:1", ["ray://127.0.0.1:1", "ray start --head", "empty"]),
    }[form]
    if form == "auto, RAY_ADDRESS":
        env["RAY_ADDRESS"] = "127.0.0.1:1"
    if form == "auto, nothing running" and any("gcs_server" in c for c in ray_processes().values()):
        pytest.skip("a Ray cluster of someone else's runs on this machine: 'auto' would join it")
    if form == "ray-client missing":
        env = no_client_env(tmp_path, env)
    if form == "ray-client" and not client_installed():
        pytest.skip("the Ray Client (pip install 'ray[client]') is not installed here")
    argv = annotate_argv if command == "annotate" else distill_argv
    code, _, err, seconds = run(argv(tmp_path, "--ray-address", address), env)
    line = one_line(code, err, seconds)
    assert all(w in line for w in wants), line


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["annotate", "distill"])
def test_more_workers_than_this_machine_holds_is_one_line_at_once(command, tmp_path, ray_tmp):
    env = {**_env(), "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    argv = annotate_argv if command == "annotate" else distill_argv
    cores = os.cpu_count()
    for extra, wants in (
        (["--workers", "1000"], ["--workers 1000", f"{cores} CPU"]),
        (["--workers", str(cores), "--worker-cpus", "1.5"], [f"--workers {cores}", f"{cores} CPU"]),
        (["--workers", "1", "--worker-gpus", "64"], ["--worker-gpus 64", "GPU"]),
    ):
        code, _, err, seconds = run(argv(tmp_path, *extra), env)
        line = one_line(code, err, seconds)
        assert all(w in line for w in wants), line
        assert not [c for c in ray_processes().values() if ray_tmp in c], "a Ray runtime was started"


@pytest.fixture
def small_cluster(ray_tmp, monkeypatch):
    """One Ray node of 2 logical CPUs with its session in ``ray_tmp``; shut down at the end."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        yield nodes
    finally:
        nodes.shutdown()


@pytest.mark.timeout(300)
def test_workers_an_existing_cluster_cannot_place_are_one_line_at_once(small_cluster, tmp_path, ray_tmp):
    env = {**_env(), "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    for extra, wants in (
        (["--workers", "3"], ["--workers 3", "room for 2"]),
        (["--workers", "1", "--worker-cpus", "3"], ["--worker-cpus 3", "room for 0"]),
    ):
        for argv in (annotate_argv, distill_argv):
            code, _, err, seconds = run(argv(tmp_path, "--ray-address", small_cluster.address, *extra), env)
            line = one_line(code, err, seconds)
            assert all(w in line for w in wants) and small_cluster.address in line, line


def files_holding(folder: str, secret: str) -> list[str]:
    """Every file under ``folder`` whose bytes hold ``secret`` (as ``grep -rl`` finds them)."""
    done = subprocess.run(["grep", "-rl", "--", secret, folder], capture_output=True, text=True, timeout=60)
    return done.stdout.split()


@pytest.mark.timeout(400)
@pytest.mark.parametrize("where", ["existing cluster", "runtime started here"])
def test_a_hosted_key_reaches_the_workers_and_no_ray_session_file_holds_it(
    where, chat_server, tmp_path, ray_tmp, monkeypatch
):
    pytest.importorskip("openai")
    url, keys = chat_server
    secret = "key-" + os.urandom(12).hex()
    env = {**_env(), "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1", "DISTILLERY_TEST_KEY": secret}
    env.pop("RAY_ADDRESS", None)
    hosted = ["--backend", "openai", "--base-url", url, "--api-key-env", "DISTILLERY_TEST_KEY", "--chunk-size", "4"]
    cluster = None
    try:
        if where == "existing cluster":  # the nodes were started without the key: only the driver has it
            from ray.cluster_utils import Cluster

            monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
            hosted += ["--ray-address", cluster.address]
        code, out, err, seconds = run(annotate_argv(tmp_path, *hosted, "--workers", "2"), env, timeout=240)
        assert code == 0, err[-3000:]
        assert secret not in out + err
        assert keys and set(keys) == {f"Bearer {secret}"}, "the workers had the key"
        assert not files_holding(ray_tmp, secret), "a file of the Ray session holds the key"
        assert not files_holding(str(tmp_path), secret), "a file of the run holds the key"
    finally:
        if cluster is not None:
            cluster.shutdown()


@pytest.mark.timeout(120)
def test_annotate_refuses_workers_that_do_not_fit_before_writing_to_out(tmp_path, ray_tmp):
    env = {**_env(), "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    code, _, err, seconds = run(annotate_argv(tmp_path, "--workers", "1000"), env)
    one_line(code, err, seconds)
    assert not (tmp_path / "run").exists(), "written to --out"
