"""``annotate --engine ray`` against ``--engine local`` on the same rows (issue #29), as ratios.

    python benchmarks/scale_out.py [--rows 320] [--big 10000,100000]

On a Ray cluster of one node started here (``ray.cluster_utils.Cluster``, 4 logical CPUs; the
machine has 2 cores), with the embedded SmolLM2 teacher on ``--rows`` built-in tweets:

1. rows/s of ``--engine local`` on 1 thread, ``--engine ray`` with 1 worker of 1 thread (target:
   overhead <= 10%) and with 2 workers of 1 thread (target: >= 1.7x the 1-worker run); rows/s is
   the manifest's ``teacher_rows_per_s``: rows over the time from the loaded teacher (every worker
   ready) to the last chunk, for both engines;
2. Ray core actors (what distill ships) against Ray Data's ``map_batches`` over an actor pool of
   the same workers, same chunks: wall time from start to every row scored, worker start included;
3. the driver's peak memory (max RSS of the ``distillery annotate`` process) at the ``--big`` row
   counts, with a tiny random Llama teacher on 2 workers (target: flat within 10%);
4. the time from a kill -9 of the driver to the rerun's first new chunk.

Results: benchmarks/results/scale_out.json, the machine named.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import ROOT, machine, write_result

sys.path.insert(0, str(ROOT / "tests"))


def driver(args: list, env: dict | None = None) -> tuple[float, int, str]:
    """``distillery annotate ARGS`` in a process of its own: ``(wall s, peak RSS in MiB, output)``."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillery", "annotate", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"annotate failed ({proc.returncode}): {output[-3000:]}")
    return time.perf_counter() - started, usage.ru_maxrss // 1024, output


def rows_per_s(out: Path) -> float:
    import json

    return json.loads((out / "annotations" / "manifest.json").read_text())["teacher_rows_per_s"]


def ray_data_wall(address: str, rows: int, chunk: int, workers: int) -> float:
    """Ray Data's map_batches over an actor pool of ``workers`` TeacherWorkers, one chunk per batch:
    seconds from start to every row scored (run in a process of its own: one Ray driver per process)."""
    code = f"""
import time, ray
from dataclasses import asdict
from distillery.annotate import AnnotateConfig, load_rows, load_task
from distillery.annotate.cluster import TeacherWorker
started = time.perf_counter()
cfg = AnnotateConfig(limit={rows}, device="cpu")
task = load_task(cfg.task)
texts = load_rows(cfg, task.labels)["text"].tolist()
ray.init(address="{address}", log_to_driver=False, logging_level="ERROR")
settings, task_dict = {{**cfg.flat(), "engine": "local"}}, asdict(task)

class Score:
    def __init__(self):
        self.worker = TeacherWorker(settings, task_dict, 1)
        assert self.worker.error is None, self.worker.error

    def __call__(self, batch):
        return {{"rows": [len(self.worker.score(list(t))[0]) for t in batch["texts"]]}}

chunks = [{{"texts": texts[i : i + {chunk}]}} for i in range(0, len(texts), {chunk})]
ds = ray.data.from_items(chunks).map_batches(Score, batch_size=1, concurrency={workers}, num_cpus=1)
done = sum(r["rows"] for r in ds.iter_rows())
assert done == len(texts), (done, len(texts))
print("WALL", time.perf_counter() - started)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    walls = [line for line in out.stdout.splitlines() if line.startswith("WALL")]
    if not walls:
        raise SystemExit(f"ray data run failed: {out.stderr[-3000:]}")
    return float(walls[-1].split()[1])


def kill_to_first_chunk(args: list) -> float:
    """Seconds from a kill -9 of the driver (after its first chunk) to the rerun's first new chunk."""
    parts = Path(args[args.index("--out") + 1]) / "annotations"
    count = lambda: len(list(parts.glob("part-*.csv"))) if parts.is_dir() else 0  # noqa: E731
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillery", "annotate", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while count() < 1:
        assert time.monotonic() < deadline and proc.poll() is None, "no first chunk"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed, before = time.perf_counter(), count()
    rerun = subprocess.Popen(
        [sys.executable, "-m", "distillery", "annotate", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while count() <= before:
            assert time.monotonic() < deadline and rerun.poll() is None, "no new chunk"
            time.sleep(0.05)
        return time.perf_counter() - killed
    finally:
        rerun.kill()
        rerun.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=320, help="built-in tweets for the throughput runs")
    parser.add_argument("--big", default="10000,100000", help="row counts for the driver's memory")
    args = parser.parse_args()
    from ray.cluster_utils import Cluster
    from tiny import build_llama

    started = time.perf_counter()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    work = Path(tempfile.mkdtemp(prefix="scale_out-"))
    result: dict = {"rows": args.rows}
    try:
        cluster = ["--engine", "ray", "--ray-address", nodes.address]
        demo = ["--limit", args.rows, "--device", "cpu", "--chunk-size", 40]
        one_thread = {"OMP_NUM_THREADS": "1"}
        runs = {
            "local, 1 thread": (["--out", work / "local", *demo], one_thread),
            "ray, 1 worker x 1 thread": (["--out", work / "ray1", *demo, *cluster, "--workers", 1], None),
            "ray, 2 workers x 1 thread": (["--out", work / "ray2", *demo, *cluster, "--workers", 2], None),
        }
        speed = {}
        for name, (argv, env) in runs.items():
            wall, _, _ = driver(argv, env)
            speed[name] = {"rows_per_s": rows_per_s(Path(argv[1])), "wall_s": wall}
            print(f"{name}: {speed[name]['rows_per_s']:.2f} rows/s, {wall:.0f} s in all", flush=True)
        base, one, two = (speed[k]["rows_per_s"] for k in runs)
        result["throughput"] = speed
        result["ray 1 worker / local"] = one / base
        result["ray 2 workers / ray 1 worker"] = two / one
        data_wall = ray_data_wall(nodes.address, args.rows, 40, 2)
        result["ray data map_batches, 2 workers: wall s"] = data_wall
        result["ray data wall / ray core wall (2 workers)"] = data_wall / speed["ray, 2 workers x 1 thread"]["wall_s"]
        print(f"ray data, 2 workers: {data_wall:.0f} s in all", flush=True)

        teacher = build_llama(work / "tiny_llama")
        memory = {}
        for n in map(int, args.big.split(",")):
            data = work / f"rows_{n}.csv"
            pd.DataFrame({"text": [f"row {i}: a short review, fine or awful" for i in range(n)]}).to_csv(
                data, index=False
            )
            argv = ["--out", work / f"big_{n}", "--data", data, "--teacher", teacher, "--device", "cpu"]
            wall, rss, _ = driver([*argv, "--chunk-size", 1000, "--calibrate", "none", *cluster, "--workers", 2])
            memory[n] = {"driver_peak_rss_mib": rss, "wall_s": wall}
            print(f"{n} rows: driver peak RSS {rss} MiB, {wall:.0f} s", flush=True)
        sizes = sorted(memory)
        result["driver memory"] = memory
        result["driver peak RSS, largest / smallest"] = (
            memory[sizes[-1]]["driver_peak_rss_mib"] / memory[sizes[0]]["driver_peak_rss_mib"]
        )
        data = work / f"rows_{sizes[0]}.csv"
        argv = ["--out", work / "killed", "--data", data, "--teacher", teacher, "--device", "cpu", "--chunk-size", 500]
        result["kill -9 of the driver to the rerun's first new chunk, s"] = kill_to_first_chunk(
            [*argv, "--calibrate", "none", *cluster, "--workers", 2]
        )
    finally:
        nodes.shutdown()
    for key, value in result.items():
        if not isinstance(value, dict):
            print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    write_result(
        "scale_out",
        {
            "command": " ".join(["python benchmarks/scale_out.py", *sys.argv[1:]]),
            "device": "CPU only (no GPU lent)",
            "machine": machine(),
            "wall_s": time.perf_counter() - started,
            **result,
        },
    )


if __name__ == "__main__":
    main()
