"""Rows that can never pass and how a rerun treats them (issue #26): a row far over --max-row-chars
fails before the teacher sees it, a row the server refuses (4xx) fails for good, and neither is
asked again unless --retry-failed; an API key variable that is unset is refused up front.

The hosted tests run a small OpenAI-compatible HTTP server in a thread (no llama.cpp needed).
"""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import make_rows, reply_json
from test_hosted_unit import ANSWER

from distillery.annotate import AnnotateConfig, annotate, read_annotations

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def chat_server():
    """A chat-completions server: a row whose text holds REFUSE always gets a 400 with a reason, one
    holding FLAKY a 503 the first time only; the rest are answered with top log-probs. Yields
    ``(base URL, requests per row text, Authorization headers, longest message seen)``."""
    asked, auth, longest, flaked = Counter(), [], [0], set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = request["messages"][-1]["content"]
            row = next((w for w in text.split() if w.startswith(("REFUSE", "FLAKY", "row"))), text[:20])
            asked[row] += 1
            auth.append(self.headers.get("Authorization"))
            longest[0] = max(longest[0], len(text))
            status, answer = 200, ANSWER
            if "REFUSE" in text:
                status, answer = (
                    400,
                    {"error": {"message": "this input violates the usage policy", "type": "invalid_request_error"}},
                )
            elif "FLAKY" in text and row not in flaked:
                flaked.add(row)
                status, answer = 503, {"error": {"message": "overloaded, try again", "type": "server_error"}}
            reply_json(self, status, answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", asked, auth, longest
    server.shutdown()
    server.server_close()


def _hosted_cfg(url, data, out, **kw):
    base = {
        "backend": "openai",
        "base_url": url,
        "api_key_env": "none",
        "teacher": "m",
        "data": str(data),
        "out": str(out),
        "text_column": "text",
        "label_column": "label",
        "limit": 0,
        "test_fraction": 0.0,
        "calibrate": "mean",
        "max_retries": 0,
        "request_timeout": 10.0,
        "concurrency": 2,
    }
    return AnnotateConfig.from_flat({**base, **kw})  # flat, as a config file: the openai backend's settings among them


def test_a_huge_row_fails_before_tokenizing_and_is_retried_only_when_asked(tiny_llama, tmp_path, monkeypatch):
    """Case 8: the row is over 8 x --max-prompt-tokens characters: the local teacher never tokenizes it,
    it is a failed row that says its length and the bound, and a rerun leaves it until --retry-failed."""
    from distillery.annotate.local import LocalTeacher

    data = make_rows(8)
    data.loc[3, "review"] = "huge " * 60_000  # 300,000 characters; the automatic bound is 8 x 1024
    path = tmp_path / "rows.csv"
    data.to_csv(path, index=False)
    seen = []
    real_lengths, real_score = LocalTeacher.prompt_lengths, LocalTeacher.score
    monkeypatch.setattr(
        LocalTeacher, "prompt_lengths", lambda self, texts: (seen.extend(texts), real_lengths(self, texts))[1]
    )
    monkeypatch.setattr(LocalTeacher, "score", lambda self, texts: (seen.extend(texts), real_score(self, texts))[1])
    cfg = {
        "data": str(path),
        "out": str(tmp_path / "run"),
        "text_column": "review",
        "label_column": "sentiment",
        "teacher": str(tiny_llama),
        "device": "cpu",
        "limit": 0,
        "test_fraction": 0.0,
        "calibrate": "mean",
    }

    started = time.perf_counter()
    root = annotate(AnnotateConfig.from_flat(cfg))
    frame, manifest = read_annotations(root)
    assert max(map(len, seen)) < 1000, "the huge row reached the teacher"
    bad = frame[frame["error_type"] != ""]
    assert (
        bad["error_type"].tolist() == ["too_long"] and manifest["status"] == "complete" and manifest["rows_failed"] == 1
    )
    assert (
        "300,000 characters" in bad["error_message"].iloc[0] and "--max-row-chars 8,192" in bad["error_message"].iloc[0]
    )
    assert time.perf_counter() - started < 60

    seen.clear()
    annotate(AnnotateConfig.from_flat(cfg))  # a plain rerun: nothing to ask
    assert seen == [] and read_annotations(root)[1]["rows_failed"] == 1

    annotate(AnnotateConfig.from_flat({**cfg, "retry_failed": True, "max_row_chars": 400_000}))
    assert [len(t) for t in seen if len(t) > 1000] == [300_000, 300_000], (
        "asked again (it then fails on --max-prompt-tokens)"
    )
    frame, _ = read_annotations(root)
    assert frame.loc[frame["error_type"] != "", "error_type"].tolist() == ["prompt_too_long"]


def _rows_csv(path, texts):
    path.write_text(
        "text,label\n" + "".join(f"{t},{'positive' if i % 2 else 'negative'}\n" for i, t in enumerate(texts))
    )
    return path


def test_a_huge_row_is_never_sent_to_the_server(chat_server, tmp_path):
    """Case 8, hosted: a row over --max-row-chars fails without a request."""
    pytest.importorskip("openai")
    url, asked, _, longest = chat_server
    data = _rows_csv(
        tmp_path / "rows.csv", [f"row{i} is a fine text" for i in range(4)] + ["long " * 2000]
    )  # 10,000 > 8 x 1024
    frame, manifest = read_annotations(annotate(_hosted_cfg(url, data, tmp_path / "run")))
    assert longest[0] < 10_000 and sum(asked.values()) == 4, "the too-long row was sent"
    assert frame["error_type"].tolist() == ["", "", "", "", "too_long"] and manifest["status"] == "complete"


def test_rows_the_server_refuses_fail_for_good_and_the_run_finishes(chat_server, tmp_path):
    """Case 9: 3 rows always get a 400, 1 row a 503 once. The first run completes with them failed;
    the rerun asks only the 503 row again (no 'every request failed'), and --retry-failed asks the
    refused rows again without stopping the run."""
    pytest.importorskip("openai")
    url, asked, _, _ = chat_server
    data = _rows_csv(
        tmp_path / "rows.csv",
        [f"row{i} is a fine text" for i in range(12)] + ["REFUSE1 x", "REFUSE2 y", "REFUSE3 z", "FLAKY1 w"],
    )

    root = annotate(_hosted_cfg(url, data, tmp_path / "run"))
    frame, manifest = read_annotations(root)
    failed = dict(zip(frame["text"].str[:7], frame["error_type"]))
    assert failed["REFUSE1"] == failed["REFUSE2"] == failed["REFUSE3"] == "http_400" and failed["FLAKY1 "] == "http_503"
    assert "usage policy" in frame.loc[frame["error_type"] == "http_400", "error_message"].iloc[0]
    assert manifest["status"] == "complete" and manifest["rows_failed"] == 4

    asked.clear()
    root = annotate(
        _hosted_cfg(url, data, tmp_path / "run")
    )  # was: every rerun asked the 400 rows and stopped with exit 2
    frame, manifest = read_annotations(root)
    assert dict(asked) == {"FLAKY1": 1}, "only the temporary failure is asked again"
    assert manifest["status"] == "complete" and manifest["rows_failed"] == 3 and "calibration" in manifest
    assert sorted(frame.loc[frame["error_type"] != "", "error_type"]) == ["http_400"] * 3

    annotate(_hosted_cfg(url, data, tmp_path / "run"))  # only the refused rows left: nothing to ask, the run is done
    assert dict(asked) == {"FLAKY1": 1}

    asked.clear()
    annotate(
        _hosted_cfg(url, data, tmp_path / "run", retry_failed=True)
    )  # only refused rows left to ask: they fail again, the run ends
    assert dict(asked) == {"REFUSE1": 1, "REFUSE2": 1, "REFUSE3": 1}
    assert read_annotations(root)[1]["status"] == "complete"


def test_an_unset_key_variable_is_one_line_and_none_sends_no_key(chat_server, tmp_path, monkeypatch, capsys):
    """Case 3: --api-key-env naming an unset or empty variable stops before any request, naming the
    variable; --api-key-env none works and sends no real key, even with OPENAI_API_KEY set."""
    pytest.importorskip("openai")
    from distillery import cli as distillery_cli

    url, asked, auth, _ = chat_server
    make_rows(4).rename(columns={"review": "text", "sentiment": "label"}).to_csv(tmp_path / "rows.csv", index=False)
    common = [
        "annotate",
        "--backend",
        "openai",
        "--base-url",
        url,
        "--teacher",
        "m",
        "--data",
        str(tmp_path / "rows.csv"),
        "--calibrate",
        "mean",
    ]
    monkeypatch.delenv("DISTILLERY_UNSET_KEY", raising=False)
    monkeypatch.setenv("DISTILLERY_EMPTY_KEY", "")
    for name in ("DISTILLERY_UNSET_KEY", "DISTILLERY_EMPTY_KEY"):
        code = distillery_cli.main([*common, "--api-key-env", name, "--out", str(tmp_path / name)])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("distillery")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err
        assert name in lines[0] and "export" in lines[0] and "--api-key-env none" in lines[0]
    assert not asked, "a request was sent without a key"

    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-key-0123456789")
    assert distillery_cli.main([*common, "--api-key-env", "none", "--out", str(tmp_path / "ok")]) == 0
    assert auth and not any("sk-real-key" in (a or "") for a in auth)
