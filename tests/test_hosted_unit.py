"""The hosted teacher's mapping from top-K tokens to label log-probs (no server needed)."""

import math

import pytest

from distillery.annotate.logprobs import echo_is_shifted, echo_label_logprob, labels_from_top_logprobs


def test_case_and_space_variants_are_summed_and_renormalised():
    top = [
        (" positive", math.log(0.5)),
        ("Positive", math.log(0.2)),
        (" negative", math.log(0.1)),
        (" the", math.log(0.1)),
    ]
    logprobs, covered, bounded = labels_from_top_logprobs(top, ["negative", "positive"])
    assert [math.exp(x) for x in logprobs] == pytest.approx([0.125, 0.875])
    assert covered == pytest.approx(0.8) and bounded == []


def test_a_missing_label_is_bounded_by_the_smallest_returned_logprob_and_flagged():
    top = [("positive", math.log(0.6)), ("great", math.log(0.05))]
    logprobs, covered, bounded = labels_from_top_logprobs(top, ["negative", "positive"])
    assert bounded == ["negative"]
    raw_negative = math.log(0.05)  # the bound, not an invented number
    assert logprobs[0] - logprobs[1] == pytest.approx(raw_negative - math.log(0.6))


def test_a_token_that_begins_two_labels_counts_for_neither():
    top = [("ne", math.log(0.5)), ("neutral", math.log(0.3)), ("negative", math.log(0.1))]
    logprobs, _, _ = labels_from_top_logprobs(top, ["negative", "neutral"])
    assert [math.exp(x) for x in logprobs] == pytest.approx([0.25, 0.75])


# An echo of "A B neg ative" + generated ".": entry i of top_logprobs is the distribution that
# predicts token i (aligned, as vLLM) or token i+1 (llama.cpp after an unlisted BOS).
ALIGNED = {
    "tokens": ["A", " B", " neg", "ative", "."],
    "token_logprobs": [None, -1.0, -0.5, -0.25, -0.1],
    "top_logprobs": [None, {" B": -1.0}, {" neg": -0.5, " pos": -1.5}, {"ative": -0.25}, {".": -0.1}],
}
SHIFTED = {
    "tokens": ["A", " B", " neg", "ative"],
    "token_logprobs": [None, -9.0, -9.0, -9.0],
    "top_logprobs": [{" B": -1.0}, {" neg": -0.5, " pos": -1.5}, {"ative": -0.25, "x": -3.0}, {".": -0.1}],
}


def test_echo_aligned_sums_the_label_tokens_and_skips_the_generated_one():
    assert echo_label_logprob(ALIGNED, " negative", ".", shifted=False) == (pytest.approx(-0.75), False)


def test_echo_shifted_reads_each_token_from_the_previous_position():
    assert echo_label_logprob(SHIFTED, " negative", "", shifted=False)[0] == pytest.approx(-18.0)  # read naively: wrong
    assert echo_label_logprob(SHIFTED, " negative", ".", shifted=True) == (pytest.approx(-0.75), False)


def test_echo_shifted_token_outside_the_top_k_is_bounded_and_flagged():
    body = {**SHIFTED, "top_logprobs": [{" B": -1.0}, {" pos": -1.5, " x": -2.0}, {"ative": -0.25}, {}]}
    assert echo_label_logprob(body, " negative", "", shifted=True) == (pytest.approx(-2.25), True)


def test_echo_label_merged_with_the_prompt_is_an_error():
    body = {**ALIGNED, "tokens": ["A", " B neg", "ative", "."]}
    with pytest.raises(ValueError, match="merged"):
        echo_label_logprob(body, " negative", ".", shifted=False)


def test_probe_tells_llama_cpp_late_logprobs_from_aligned_ones():
    tokens = [str(i) for i in range(20)]
    aligned = {
        "tokens": tokens,
        "token_logprobs": [None] + [-0.01] * 19,
        "top_logprobs": [None] + [{t: -0.01} for t in tokens[1:]],
    }
    late = {
        "tokens": tokens,
        "token_logprobs": [None] + [-12.0] * 19,
        "top_logprobs": [{tokens[i + 1]: -0.01, tokens[i]: -12.0} for i in range(19)] + [{}],
    }
    assert not echo_is_shifted(aligned) and echo_is_shifted(late)


ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    "choices": [
        {
            "index": 0,
            "finish_reason": "length",
            "message": {"role": "assistant", "content": "positive"},
            "logprobs": {
                "content": [
                    {
                        "token": "positive",
                        "logprob": -0.1,
                        "bytes": None,
                        "top_logprobs": [
                            {"token": "positive", "logprob": -0.1, "bytes": None},
                            {"token": "negative", "logprob": -2.5, "bytes": None},
                        ],
                    }
                ]
            },
        }
    ],
}


@pytest.fixture
def answering_server():
    """A real HTTP server that answers every chat request at once and records when each arrived and
    its headers. Model 'smollm2' is answered; 'echo-headers' gets a 400 whose message repeats the
    key and the api-key header, as a careless proxy might; any other model a 404."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from conftest import reply_json

    arrivals, headers = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            arrivals.append(time.monotonic())
            headers.append({k.lower(): v for k, v in self.headers.items()})
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, answer = 200, ANSWER
            if request["model"] == "echo-headers":
                status = 400
                answer = {
                    "error": {
                        "message": f"bad request from {self.headers.get('Authorization')} with api-key "
                        f"{self.headers.get('api-key')}",
                        "type": "invalid_request_error",
                    }
                }
            elif request["model"] != "smollm2":  # as OpenAI answers an unknown model
                status = 404
                answer = {
                    "error": {
                        "message": f"The model `{request['model']}` does not exist",
                        "type": "invalid_request_error",
                        "code": "model_not_found",
                    }
                }
            reply_json(self, status, answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", arrivals, headers
    server.shutdown()


def test_requests_per_minute_spaces_the_requests(answering_server, tmp_path):
    from distillery.annotate import AnnotateConfig, load_task
    from distillery.annotate.backends import build_teacher

    url, arrivals, _ = answering_server
    task = load_task("sentiment-binary")
    texts = [f"row {i}" for i in range(6)]
    free = build_teacher(
        AnnotateConfig(
            backend="openai",
            out=str(tmp_path / "a"),
            settings={"base_url": url, "api_key_env": "none", "concurrency": 4},
        ),
        task,
    )
    assert all(a.error_type == "" for a in free.score(texts))
    assert arrivals[-1] - arrivals[0] < 1.0  # unlimited: as fast as the server answers
    arrivals.clear()
    limited = build_teacher(
        AnnotateConfig(
            backend="openai",
            out=str(tmp_path / "b"),
            settings={"base_url": url, "api_key_env": "none", "concurrency": 4, "requests_per_minute": 200},
        ),
        task,
    )
    assert all(
        a.error_type == "" for a in limited.score(texts[:3]) + limited.score(texts[3:])
    )  # the limit holds across batches
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(arrivals) == 6 and min(gaps) > 0.25  # 200/minute: one every 0.3 s


def test_unknown_model_gives_one_clear_error_line_and_no_chunk(answering_server, tmp_path, capsys):
    from conftest import make_rows

    from distillery import cli as distillery_cli

    url, _, _ = answering_server
    make_rows(4).rename(columns={"review": "text", "sentiment": "label"}).to_csv(
        tmp_path / "rows.csv", index=False
    )  # no packaged data needed
    code = distillery_cli.main(
        [
            "annotate",
            "--backend",
            "openai",
            "--base-url",
            url,
            "--api-key-env",
            "none",
            "--teacher",
            "gpt-nope",
            "--data",
            str(tmp_path / "rows.csv"),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("distillery")]
    assert (
        code == 2
        and len(lines) == 1
        and "http_404" in lines[0]
        and "gpt-nope" in lines[0]
        and "check --base-url and --teacher" in lines[0]
    )
    assert "Traceback" not in err and not list((tmp_path / "annotations").glob("part-*.csv"))


HEADER_SECRET, KEY_SECRET = (
    "hdr-7f3a9c1e5b2d4806",
    "key-0b1d2f3a4c5e6978",
)  # no known key format: found by value, not by pattern


def test_no_key_or_header_value_reaches_a_file_or_the_terminal(answering_server, tmp_path, monkeypatch, capsys):
    """'api-key: VALUE' arrives as VALUE (no leading space); neither it nor the key is in any file of
    the run folder (chunks, manifest, config.yaml, request cache) or in what the command prints,
    even when the server repeats both in an error."""
    import yaml
    from conftest import make_rows

    from distillery import cli as distillery_cli

    url, _, headers = answering_server
    monkeypatch.setenv("DISTILLERY_TEST_KEY", KEY_SECRET)
    make_rows(6).rename(columns={"review": "text", "sentiment": "label"}).to_csv(tmp_path / "rows.csv", index=False)
    common = [
        "annotate",
        "--backend",
        "openai",
        "--base-url",
        url,
        "--api-key-env",
        "DISTILLERY_TEST_KEY",
        "--extra-headers",
        f"api-key: {HEADER_SECRET}",
        "--data",
        str(tmp_path / "rows.csv"),
    ]
    assert distillery_cli.main([*common, "--teacher", "smollm2", "--out", str(tmp_path / "ok")]) == 0
    assert headers and all(
        h["api-key"] == HEADER_SECRET and h["authorization"] == f"Bearer {KEY_SECRET}" for h in headers
    )
    assert distillery_cli.main([*common, "--teacher", "echo-headers", "--out", str(tmp_path / "failed")]) == 2
    printed = capsys.readouterr()
    assert "http_400" in printed.err and "***" in printed.err
    assert HEADER_SECRET not in printed.out + printed.err and KEY_SECRET not in printed.out + printed.err
    written = yaml.safe_load((tmp_path / "ok" / "annotations" / "config.yaml").read_text())
    assert written["extra_headers"] == ["api-key: <redacted>"], "the header's name stays, so the run can be reproduced"
    for run in ("ok", "failed"):
        files = [p for p in sorted((tmp_path / run).rglob("*")) if p.is_file()]
        assert files and not [
            str(p) for p in files if HEADER_SECRET.encode() in p.read_bytes() or KEY_SECRET.encode() in p.read_bytes()
        ]
