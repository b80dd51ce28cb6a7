"""The hosted teacher against a real llama.cpp server (llama-cpp-python) serving the SmolLM2 GGUF.

The server is started and stopped by a fixture on a free loopback port. The tests skip with
a message when llama-cpp-python is not installed (`make install-server` installs it). A server
that dies fails the next test at once with the tail of its log, and no test waits more than
two minutes on a server that does not answer (pytest-timeout; four for the two echo tests, whose
17 echoed requests alone take 70-115 s on 2 cores).
"""

import dataclasses
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import yaml
from conftest import stop_server
from servers import wait_until_up, why_it_died

from distillery.annotate import AnnotateConfig, annotate, load_rows, read_annotations
from distillery.annotate.backends import build_teacher
from distillery.core.annotations import label_columns
from distillery.core.models import resolve_model
from distillery.core.tasks import TaskSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python[server] (make install-server)"
    ),
    pytest.mark.timeout(120),  # setup included: the module's server starts within the first test's two minutes
]
# No answer prefix: a chat API answers from the start of the assistant turn, so the local
# teacher is asked to score the same position.
TASK = dict(
    name="plain",
    labels=["negative", "positive"],
    instruction="Classify the sentiment of the following text as {labels}. Answer with one word.\n\n{text}",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _log_tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-2000:]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """One llama.cpp server for the module: ``(process, base URL, log file)``, checked to answer
    one completion (a server built for another CPU may die on its first one)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = open(log_path, "w+")  # a pipe would fill up and stall the server
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        resolve_model("smollm2"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads_batch",
        "1",
        "--n_ctx",
        "2048",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            wait_until_up("llama.cpp server", proc, f"{url}/models", log_path, timeout=60)
        except RuntimeError as err:
            pytest.fail(str(err), pytrace=False)
        smoke = urllib.request.Request(
            f"{url}/completions",
            data=json.dumps({"prompt": "Hello", "max_tokens": 1}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(smoke, timeout=30).read()
        except OSError as err:
            time.sleep(0.5)  # let a crashing server exit, so the message says so
            if proc.poll() is not None:
                died = why_it_died("llama.cpp server", proc.returncode, _log_tail(log))
                pytest.fail(f"did not complete one token: {died}")
            pytest.fail(f"llama.cpp server did not complete one token ({err}); it is up: {_log_tail(log)}")
        yield proc, url, log
    finally:
        stop_server(proc)
        log.close()


@pytest.fixture
def server(llama_server):
    """The module's server URL, checked alive before and after each test: a dead server fails the
    test at once, with its log, instead of being retried until the timeout."""
    proc, url, log = llama_server
    if proc.poll() is not None:
        pytest.fail(f"llama.cpp server died before this test (exit {proc.returncode}): {_log_tail(log)}")
    yield url
    if proc.poll() is not None:
        pytest.fail(f"llama.cpp server died during this test (exit {proc.returncode}): {_log_tail(log)}")


def _cfg(tmp_path, url, **kw):
    """The hosted teacher's config; ``kw``: annotate's settings and the openai backend's own (hosted_scoring=, ...)."""
    base = dict(backend="openai", out=str(tmp_path), limit=50, seed=0, calibrate="none", test_fraction=0.0)
    own = {f.name for f in dataclasses.fields(AnnotateConfig)}
    settings = {
        "teacher": "smollm2",
        "base_url": url,
        "api_key_env": "none",
        "concurrency": 2,
        **{k: v for k, v in kw.items() if k not in own},
    }
    return AnnotateConfig(**{**base, **{k: v for k, v in kw.items() if k in own}}, settings=settings)


def test_hosted_agrees_with_the_local_teacher_on_the_same_gguf(server, tmp_path):
    task_file = tmp_path / "plain.yaml"
    task_file.write_text(yaml.safe_dump(TASK))
    root = annotate(_cfg(tmp_path, server, task=str(task_file)))
    hosted, manifest = read_annotations(root)
    assert (hosted["error_type"] == "").all(), hosted["error_message"].tolist()[:3]
    assert manifest["usage"]["requests_sent"] >= 50 and manifest["usage"]["prompt_tokens"] > 0

    # The server's answers are matched case-insensitively; the local scorer sums the same variants.
    local = build_teacher(AnnotateConfig(device="cpu"), TaskSpec(**TASK, case_variants=True))
    rows = load_rows(AnnotateConfig(limit=50, seed=0, test_fraction=0.0), ["negative", "positive"])
    assert rows["id"].tolist() == hosted["id"].tolist()
    local_lp = np.array([a.logprobs for a in local.score(rows["text"].tolist())])
    hosted_lp = hosted[label_columns(["negative", "positive"])].to_numpy(float)
    agreement = (local_lp.argmax(1) == hosted_lp.argmax(1)).mean()
    mad = np.abs(np.exp(local_lp[:, 1]) - np.exp(hosted_lp[:, 1])).mean()
    print(f"hosted vs local: agreement {agreement:.3f}, mean |p_pos difference| {mad:.4f}")
    # Same weights, but llama.cpp computes with the Q4_1 blocks while transformers uses the
    # de-quantized float32 copy, and the server's top-20 may miss a variant the local scorer
    # sums: expect the same label almost always and probabilities within 0.1 on average.
    assert agreement >= 0.9
    assert mad < 0.1


def _local_logprobs(prompts: list[str], task: TaskSpec, bos: bool) -> np.ndarray:
    """Label log-probs (renormalised) of the local float32 SmolLM2 for ready-made prompt texts."""
    from distillery.annotate.teacher import normalise

    local = build_teacher(AnnotateConfig(device="cpu", settings={"prefix_cache": False}), task)
    tok = local.tokenizer
    ids = [([tok.bos_token_id] if bos else []) + tok(p, add_special_tokens=False).input_ids for p in prompts]
    scores = local.scorer.label_logprobs(ids)
    return np.array([normalise(row.tolist()).logprobs for row in scores])


@pytest.mark.timeout(240)
def test_echo_scoring_with_the_chat_template_matches_the_local_teacher(server, tmp_path):
    """Completions endpoint, full verbalizers, same chat template and answer prefix as local."""
    # 8 rows: llama-cpp-python sorts the whole vocabulary in Python for every echoed token, 2-5 s
    # a request on 2 busy cores, and the test must finish within its two minutes.
    root = annotate(_cfg(tmp_path, server, limit=8, hosted_scoring="echo", template_from="smollm2"))
    hosted, manifest = read_annotations(root)
    assert (hosted["error_type"] == "").all(), hosted["error_message"].tolist()[:3]
    assert manifest["usage"]["requests_sent"] == 1 + 2 * 8  # the alignment probe, then one request per label
    task = TaskSpec(**manifest["task"])
    local = build_teacher(AnnotateConfig(device="cpu"), task)
    local_lp = np.array([a.logprobs for a in local.score(hosted["text"].tolist())])
    hosted_lp = hosted[label_columns(task.labels)].to_numpy(float)
    agreement = (local_lp.argmax(1) == hosted_lp.argmax(1)).mean()
    mad = np.abs(np.exp(local_lp[:, 1]) - np.exp(hosted_lp[:, 1])).mean()
    print(f"echo (template) vs local: agreement {agreement:.3f}, mean |p_pos difference| {mad:.4f}")
    # The same prompt and label sequences: only Q4_1 vs de-quantized float32 arithmetic differs
    # (label log-probs within ~0.05 measured), so the probabilities should match closely.
    assert agreement >= 0.85 and mad < 0.05  # at most one of the 8 rows differs


@pytest.mark.timeout(240)
def test_echo_scoring_handles_llama_cpp_late_logprobs(server, tmp_path):
    """A prompt without a leading special token makes llama.cpp add an unlisted BOS, so its echoed
    log-probs come one position late; read in place they would be ~-10 per token."""
    from distillery.annotate.backends import build_teacher
    from distillery.core.tasks import load_task

    task = load_task("sentiment-binary")
    teacher = build_teacher(_cfg(tmp_path, server, hosted_scoring="echo"), task)
    texts = load_rows(AnnotateConfig(limit=8, seed=1), task.labels)["text"].tolist()  # 8 rows: see the test above
    anns = teacher.score(texts)
    assert teacher.shifted is True
    hosted_lp = np.array([a.logprobs for a in anns])
    assert all(a.mass > 0.05 for a in anns), "label mass near zero: the shift was not undone"
    local_lp = _local_logprobs([teacher.prompt_text(t) for t in texts], task, bos=True)
    agreement = (local_lp.argmax(1) == hosted_lp.argmax(1)).mean()
    mad = np.abs(np.exp(local_lp[:, 1]) - np.exp(hosted_lp[:, 1])).mean()
    print(
        f"echo (plain prompt, shifted) vs local with BOS: agreement {agreement:.3f}, mean |p_pos difference| {mad:.4f}"
    )
    assert agreement >= 0.8 and mad < 0.1  # at most one of the 8 rows differs


def test_bad_config_gives_one_clear_error_line(server, tmp_path, capsys):
    from distillery import cli as distillery_cli

    code = distillery_cli.main(
        [
            "annotate",
            "--backend",
            "openai",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key-env",
            "none",
            "--limit",
            "4",
            "--max-retries",
            "0",
            "--out",
            str(tmp_path / "dead"),
        ]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("distillery")]
    assert (
        code == 2 and len(errors) == 1 and "failed (APIConnectionError" in errors[0] and "check --base-url" in errors[0]
    )
    assert "Traceback" not in err and not list((tmp_path / "dead" / "annotations").glob("part-*.csv")), (
        "no partial garbage"
    )
    code = distillery_cli.main(["annotate", "--backend", "openai", "--limit", "4", "--out", str(tmp_path / "nourl")])
    assert code == 2 and "expected --base-url" in capsys.readouterr().err


def test_faults_are_retried_and_every_row_is_annotated_once(server, tmp_path):
    from fault_proxy import FaultProxy

    # The proxy faults a row's first request at most once, so 3 retries are plenty; one request
    # then takes at most 4 tries of <= 5 s plus <= 3.5 s of backoff (0.5 + 1 + 2), and a stall
    # (8 s) outlasts the 5 s timeout. 50 rows take ~30 s; a dead server gets 502s, fast.
    proxy = FaultProxy(_port(server), stall_seconds=8)
    try:
        cfg = _cfg(tmp_path, f"http://127.0.0.1:{proxy.port}/v1", request_timeout=5.0, max_retries=3)
        root = annotate(cfg)
    finally:
        proxy.close()
    frame, _ = read_annotations(root)
    print(f"proxy counts: {dict(proxy.counts)}")
    assert len(frame) == 50 and frame["id"].is_unique
    assert (frame["error_type"] == "").all(), frame["error_message"].tolist()[:3]
    for kind in ("429", "500", "503", "stall", "drop"):
        assert proxy.counts[kind] == 5, f"{kind} injected {proxy.counts[kind]} times, expected once per 10 rows"
    assert max(proxy.answered.values()) == 1, "an answered request was sent again"


def test_wrong_key_stops_the_run_with_one_line_and_no_key_in_it(server, tmp_path, capsys, monkeypatch):
    from fault_proxy import FaultProxy

    proxy = FaultProxy(_port(server), faults=False, api_key="right-key")
    monkeypatch.setenv("TEST_KEY", "wrong-key-123")
    try:
        from distillery import cli as distillery_cli

        code = distillery_cli.main(
            [
                "annotate",
                "--backend",
                "openai",
                "--base-url",
                f"http://127.0.0.1:{proxy.port}/v1",
                "--api-key-env",
                "TEST_KEY",
                "--limit",
                "4",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    finally:
        proxy.close()
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("distillery")]  # the rest is the progress bar
    assert (
        code == 2 and len(errors) == 1 and "refused the API key from $TEST_KEY" in errors[0] and "Traceback" not in err
    )
    assert "wrong-key-123" not in err
    assert not list((tmp_path / "run" / "annotations").glob("part-*.csv")), "no partial chunk"
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.suffix != ".sqlite":
            assert "wrong-key-123" not in path.read_text(errors="ignore")


def test_kill_9_then_rerun_resends_no_answered_request(server, tmp_path):
    import os
    import signal

    from fault_proxy import FaultProxy

    proxy = FaultProxy(_port(server), faults=False)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "distillery",
        "annotate",
        "--backend",
        "openai",
        "--base-url",
        f"http://127.0.0.1:{proxy.port}/v1",
        "--api-key-env",
        "none",
        "--limit",
        "40",
        "--chunk-size",
        "10",
        "--teacher-batch-size",
        "5",
        "--concurrency",
        "1",
        "--out",
        str(out),
    ]
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    try:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 50  # with the rerun's 60 s, within the test's two minutes
        while sum(proxy.answered.values()) < 15 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sent_before = sum(proxy.answered.values())
        assert 0 < sent_before < 40, "the kill must land mid-run"
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=60)
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr[-2000:]
    frame, _ = read_annotations(out / "annotations")
    assert len(frame) == 40 and frame["id"].is_unique and (frame["error_type"] == "").all()
    # Every answer the client had received before the kill was cached and not asked again. The
    # one request in flight (--concurrency 1) may have been answered by the server after the
    # client died, before it could cache it: that one alone may be sent twice.
    resent = sum(n - 1 for n in proxy.answered.values())
    assert resent <= 1, f"{resent} answered requests were sent again after the kill"
    assert len(proxy.answered) == 40
