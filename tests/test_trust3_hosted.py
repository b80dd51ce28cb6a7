"""The hosted teacher's trust (issue #37, cases 4 and 8), against a real local HTTP server.

Case 4: ``--restart-annotations`` asks the server again (the model behind a ``--teacher`` name may
have changed), while a resumed run still takes its own answers from its request cache.
Case 8: ``--api-key-env`` holding a key instead of a variable's name (every key shape below) is one
line that never shows it, and nothing is written to ``--out``; a name whose variable is unset is one
line naming it.
"""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import make_rows, reply_json
from test_faults_hosted import _hosted_cfg
from test_hosted_unit import ANSWER

from distillery.annotate import AnnotateConfig, annotate, read_annotations

pytestmark = pytest.mark.timeout(120)


def answer_for(label: str) -> dict:
    """ANSWER with ``label`` the teacher's first choice."""
    other = "negative" if label == "positive" else "positive"
    body = copy.deepcopy(ANSWER)
    top = body["choices"][0]["logprobs"]["content"][0]
    top["token"], body["choices"][0]["message"]["content"] = label, label
    top["top_logprobs"] = [
        {"token": label, "logprob": -0.1, "bytes": None},
        {"token": other, "logprob": -2.5, "bytes": None},
    ]
    return body


@pytest.fixture
def swappable_server():
    """A chat server whose served model can be swapped under the same name: ``state["label"]`` is what
    it answers; ``state["requests"]`` counts the requests it got."""
    state = {"label": "positive", "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            state["requests"] += 1
            reply_json(self, 200, answer_for(state["label"]))

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()
    server.server_close()


def _cfg(url: str, data: Path, out: Path, **kw) -> AnnotateConfig:
    """test_faults_hosted's hosted config, on make_rows' columns, in chunks of 4, uncalibrated."""
    settings = {"text_column": "review", "label_column": "sentiment", "calibrate": "none", "chunk_size": 4}
    return _hosted_cfg(url, data, out, **{**settings, **kw})


def test_restart_annotations_asks_the_server_again_and_a_resume_reuses_its_own_answers(swappable_server, tmp_path):
    pytest.importorskip("openai")
    url, state = swappable_server
    data = tmp_path / "rows.csv"
    make_rows(12).to_csv(data, index=False)
    out = tmp_path / "run"

    root = annotate(_cfg(url, data, out))
    assert state["requests"] == 12 and set(read_annotations(root)[0]["teacher_label"]) == {"positive"}

    # a resume (a chunk lost) takes that chunk's answers from its own cache: no request
    first = sorted(root.glob("part-*.csv"))[0]
    first.unlink()
    state["requests"] = 0
    annotate(_cfg(url, data, out))
    assert state["requests"] == 0, "a resumed run asks again what it was already answered"

    # the model behind the same --teacher name changes: a restart must ask the server again
    state["label"], state["requests"] = "negative", 0
    root = annotate(_cfg(url, data, out, restart_annotations=True))
    frame = read_annotations(root)[0]
    assert state["requests"] == 12, f"{state['requests']} requests: the restart reused an earlier run's answers"
    assert set(frame["teacher_label"]) == {"negative"}


# ---- case 8: --api-key-env holding a key ----------------------------------------------------------------

# One made-up value of each shape (the family, not a real key): built at run time, never a real credential.
KEY_SHAPES = {
    "openai": "sk-" + "Zq3vT8wLmN2pR5sX" * 3,
    "openai project": "sk-proj-" + "Zq3vT8wLmN2pR5sX" * 4,
    "openai, underscores": "sk_" + "Zq3vT8wLmN2pR5sX" * 3,
    "anthropic": "sk-ant-api03-" + "Zq3vT8wLmN2pR5sX" * 5,
    "groq": "gsk_" + "Zq3vT8wLmN2pR5sX" * 3 + "abcd",
    "github fine-grained": "github_pat_11AB3CD5EF0" + "_" + "Zq3vT8wLmN2pR5sX" * 4,
    "github classic": "ghp_" + "Zq3vT8wLmN2pR5sX" * 2 + "abcd",
    "huggingface": "hf_" + "ZqvTwLmNpRsXabcdefghijklmnopqrstuv",
    "aws access key": "AKIA" + "Q3VT8WLMN2PR5SXZ",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.Zq3vT8wLmN2pR5sXZq3vT8wLmN2pR5sX",
    "jwt, dots gone": "eyJhbGciOiJIUzI1NiJ9eyJzdWIiOiIxMjM0NTY3ODkwIn0Zq3vT8wLmN2pR5sX",
    "google": "AIza" + "Zq3vT8wLmN2pR5sX" * 2 + "abc",
    "hex": "3f9c1e5b2d48067a" * 2,
    "base62": "Zq3vTwLmNpRsXabcDEFghiJKLmnoPQR",
    "base64url with underscores": "Zq3v_T8wLmN2pR5sX-Zq3vT8wL_mN2pR5sX",
    "lowercase letters only": "zqvtwlmnprsxabcdefghijklmnopqrstuv",
    "uuid": "3f9c1e5b-2d48-067a-3f9c-1e5b2d48067a",
    "stripe": "sk_live_" + "Zq3vT8wLmN2pR5sX" * 2,
    "replicate": "r8_" + "Zq3vT8wLmN2pR5sX" * 2 + "abcdefgh",
    "base64url, underscores only": "Zq3v_T8wLmN2pR5sXZq3vT8wL_mN2pR5sX",
    "uppercase random, underscore": "ZQ3VT8WLMN2PR5SX_ZQ3VT8WLMN2PR5SX",
    "hex after a word": "key_" + "3f9c1e5b2d48067a" * 2,
}


def _annotate(tmp_path: Path, key_env: str, *extra: str) -> tuple[int, str, str]:
    """``distillery annotate`` (the CLI's main, in this process) with ``--api-key-env key_env``, its
    --out in ``tmp_path``: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from distillery import cli as distillery_cli

    data = tmp_path / "rows.csv"
    if not data.exists():
        make_rows(4).to_csv(data, index=False)
    argv = ["annotate", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--teacher", "m"]
    argv += ["--data", str(data), "--text-column", "review", "--label-column", "sentiment"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = distillery_cli.main([*argv, "--api-key-env", key_env, "--out", str(tmp_path / "run"), *extra])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_key_of_any_shape_in_api_key_env_is_one_line_never_shown_and_nothing_is_written(engine, tmp_path):
    extra = ["--engine", "ray"] if engine == "ray" else []
    accepted = {}
    for shape, value in KEY_SHAPES.items():
        case = tmp_path / shape.replace(" ", "_").replace(",", "")
        case.mkdir()
        code, out, err = _annotate(case, value, *extra)
        lines = [line for line in err.splitlines() if line.strip()]
        try:
            assert code == 2 and len(lines) == 1, err[-300:]
            assert "--api-key-env" in lines[0] and "name" in lines[0].lower(), lines[0]
            assert value not in out + err, "shown"
            for path in case.rglob("*"):
                assert not path.is_file() or value.encode() not in path.read_bytes(), path
            assert not (case / "run").exists(), "written to --out"
        except AssertionError as failure:
            accepted[shape] = str(failure).splitlines()[0][:200]
    assert not accepted, f"{len(accepted)} of {len(KEY_SHAPES)} key shapes: {accepted}"


UNSET = ("DISTILLERY_UNSET_KEY", "DISTILLERY_EMPTY_KEY", "my_key")


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_an_unset_variable_is_one_line_naming_it(engine, tmp_path, monkeypatch):
    extra = ["--engine", "ray"] if engine == "ray" else []
    monkeypatch.delenv("DISTILLERY_UNSET_KEY", raising=False)
    monkeypatch.delenv("my_key", raising=False)
    monkeypatch.setenv("DISTILLERY_EMPTY_KEY", "")
    for name in UNSET:
        case = tmp_path / name
        case.mkdir()
        code, out, err = _annotate(case, name, *extra)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, (name, err[-2000:])
        assert name in lines[0] and "export" in lines[0] and "--api-key-env none" in lines[0], lines[0]


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_an_unset_variable_writes_nothing_to_out(engine, tmp_path, monkeypatch):
    extra = ["--engine", "ray"] if engine == "ray" else []
    monkeypatch.delenv("DISTILLERY_UNSET_KEY", raising=False)
    code, _, _ = _annotate(tmp_path, "DISTILLERY_UNSET_KEY", *extra)
    assert code == 2 and not (tmp_path / "run").exists(), "written to --out"


def test_a_set_variable_of_a_name_like_shape_is_accepted(swappable_server, tmp_path, monkeypatch):
    """The shape check leaves real variable names alone (upper or lower case, digits, long)."""
    pytest.importorskip("openai")
    url, state = swappable_server
    data = tmp_path / "rows.csv"
    make_rows(4).to_csv(data, index=False)
    for i, name in enumerate(
        (
            "OPENAI_API_KEY",
            "AZURE_OPENAI_GPT4O_DEPLOYMENT_API_KEY",
            "HUGGINGFACEHUB_API_TOKEN",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "my_llm_key_2",
            "GROQ_KEY",
        )
    ):
        monkeypatch.setenv(name, "value-" + "x" * 20)
        annotate(_cfg(url, data, tmp_path / f"run{i}", api_key_env=name))
        recorded = json.loads((tmp_path / f"run{i}" / "annotations" / "manifest.json").read_text())
        assert recorded["config"]["api_key_env"] == name
