"""Hosted teacher throughput against a local llama.cpp server, and our client's overhead.

    python benchmarks/hosted_throughput.py [--rows 40]

Starts `python -m llama_cpp.server` on the SmolLM2 GGUF, then, on the same tweets:
- baseline: the same request bodies POSTed one at a time with urllib (the server's own time
  per request plus a minimal HTTP round trip);
- ours: HostedTeacher (openai client, tenacity, cache writes, parsing) at 1, 4 and 8 in flight.
Prints a table and writes benchmarks/results/hosted_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillery.annotate import AnnotateConfig, load_rows, load_task  # noqa: E402  (after the sys.path line above)
from distillery.annotate.backends import build_teacher  # noqa: E402
from distillery.core.models import resolve_model  # noqa: E402


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server not ready; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    proc, url = start_server(work / "server.log")
    try:
        task = load_task("sentiment-binary")
        task.answer_prefix = ""
        texts = load_rows(AnnotateConfig(limit=args.rows, seed=1), task.labels)["text"].tolist()
        teacher = build_teacher(
            AnnotateConfig(backend="openai", out=str(work / "warm"), settings={"teacher": "smollm2", "base_url": url}),
            task,
        )
        teacher.score(texts[:2])  # warm-up

        start = time.perf_counter()
        for text in texts:
            data = json.dumps(teacher._request(text)).encode()
            req = urllib.request.Request(
                f"{url}/chat/completions", data=data, headers={"Content-Type": "application/json"}
            )
            urllib.request.urlopen(req, timeout=60).read()
        baseline = (time.perf_counter() - start) / len(texts)

        rows = [{"client": "urllib, 1 in flight (baseline)", "rows_per_s": 1 / baseline, "s_per_row": baseline}]
        for concurrency in (1, 4, 8):
            cfg = AnnotateConfig(
                backend="openai",
                out=str(work / f"c{concurrency}"),
                settings={"teacher": "smollm2", "base_url": url, "concurrency": concurrency},
            )
            hosted = build_teacher(cfg, task)  # a fresh request cache: every row is sent
            start = time.perf_counter()
            out = hosted.score(texts)
            seconds = time.perf_counter() - start
            assert all(a.error_type == "" for a in out), [a.error_message for a in out if a.error_type][:3]
            rows.append(
                {
                    "client": f"distillery, {concurrency} in flight",
                    "rows_per_s": len(texts) / seconds,
                    "s_per_row": seconds / len(texts),
                }
            )
    finally:
        proc.terminate()
    for row in rows:
        row["overhead_vs_baseline_s"] = row["s_per_row"] - baseline
    print(f"{'client':<34} {'rows/s':>8} {'s/row':>8} {'overhead s/row':>15}")
    for row in rows:
        print(
            f"{row['client']:<34} {row['rows_per_s']:>8.2f} {row['s_per_row']:>8.3f} "
            f"{row['overhead_vs_baseline_s']:>15.3f}"
        )
    result = {
        "rows": len(texts),
        "server": "llama-cpp-python 0.3.36, SmolLM2-135M-Instruct Q4_1, --n_threads_batch 1",
        "results": rows,
    }
    (ROOT / "benchmarks" / "results" / "hosted_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
