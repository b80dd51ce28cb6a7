"""``--engine ray``: the teacher on the workers of a Ray cluster, the run folder on this machine.

This process (the driver) stays what it is with ``--engine local``: it plans the chunks, skips the
finished ones, holds the run folder's lock and is its one writer (atomic chunk writes, manifest
checksums, calibration at the end). Each worker is a Ray actor that loads the teacher once (any
registered backend, built by the same code as the local path) and scores whole chunks with
:func:`~distillery.annotate.backends.score_rows`, so its chunks equal a local run's. Workers return the
teacher's answers and never write into ``--out``; the cluster needs no shared filesystem.

Faults: a worker that dies mid-chunk (killed, out of memory, node lost) is replaced and its chunk
goes back to the queue, to the next free worker; only the driver writes, so a chunk is written
once. A worker that cannot load the teacher stops the run with one line naming its node and the
cause; the chunks already written are kept and a rerun goes on from them. Ctrl-C, an error or the
end of the run kills the workers (and stops the Ray runtime this process started).

Ray core actors rather than Ray Data's ``map_batches``: benchmarks/scale_out.py measures both
(docs/scale.md says why).
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
from collections import deque
from dataclasses import asdict

from tqdm.auto import tqdm

from distillery.core.errors import UserError

__all__ = ["ClusterTeacher", "TeacherWorker", "connect", "import_ray"]

DEATHS_PER_WORKER = 3  # worker deaths the run absorbs per --workers before it stops (the same chunk kills every one)


def import_ray():
    """Ray, or the one line that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise ImportError("--engine ray needs Ray: pip install 'distillery[ray]'") from None
    return ray


def connect(cfg):
    """Ray, connected to ``--ray-address`` (or to a runtime started here for this run, declaring at
    least the CPUs the workers reserve: Ray waits for ever on an actor it cannot place, and a worker's
    CPU is a reservation, not a core). Workers' output stays on the workers."""
    ray = import_ray()
    here = cfg.ray_address == ""
    ray.init(
        address=cfg.ray_address or None,
        num_cpus=max(os.cpu_count() or 1, math.ceil(cfg.workers * cfg.worker_cpus) + 1) if here else None,
        include_dashboard=False if here else None,
        log_to_driver=False,
        logging_level="ERROR",
    )
    return ray


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class TeacherWorker:
    """One worker (a Ray actor): loads the teacher once, then scores whole chunks.

    A teacher that cannot load is not raised here (Ray would retry or hide it behind an actor
    error): :meth:`ready` reports it, with the worker's node."""

    def __init__(self, settings: dict, task: dict, threads: int):
        self.node = f"node {socket.gethostname()}"
        self.error = None
        try:
            import ray
            import torch

            from distillery.annotate.backends import batch_limits, build_teacher, row_char_limit
            from distillery.annotate.config import AnnotateConfig
            from distillery.core.models import quiet_third_party
            from distillery.core.tasks import TaskSpec

            self.node = f"node {socket.gethostname()} ({ray.util.get_node_ip_address()})"
            torch.set_num_threads(threads)
            quiet_third_party()
            # a scratch folder of the worker's own, never --out: a hosted teacher keeps its request cache there
            cfg = AnnotateConfig.from_flat({**settings, "out": tempfile.mkdtemp(prefix="distillery-worker-")})
            self.teacher = build_teacher(cfg, TaskSpec(**task))
            self.limits, self.max_chars = batch_limits(cfg), row_char_limit(cfg)
        except Exception as err:  # reported by ready(): out of memory, a missing file, a bad key, ...
            self.error = _one_line(err)

    def ready(self) -> tuple[str, str | None]:
        """``(this worker's node, why the teacher did not load or None)``."""
        return self.node, self.error

    def score(self, texts: list[str], answered: int = 0) -> tuple[list, dict]:
        """The teacher's annotations of ``texts`` (the local path's code) and the tokens they used.
        ``answered``: rows the teacher answered so far on every worker and in earlier runs (hosted: a
        rerun whose rows all fail alike is then not taken for a wrong URL)."""
        from distillery.annotate.backends import score_rows

        if hasattr(self.teacher, "answered"):
            self.teacher.answered = max(self.teacher.answered, answered)
        before = dict(getattr(self.teacher, "usage", None) or {})
        results = score_rows(self.teacher, texts, self.limits, self.max_chars)
        after = getattr(self.teacher, "usage", None) or {}
        return results, {k: v - before.get(k, 0) for k, v in after.items()}


class ClusterTeacher:
    """The driver's side: starts ``--workers`` workers on the cluster and hands them chunks.

    Used as a context manager: on leaving it (the end, an error, Ctrl-C) every worker is killed
    and a Ray runtime this process started is stopped."""

    def __init__(self, cfg, task):
        self.ray = import_ray()
        self.cfg, self.task = cfg, task
        self.usage: dict = {}
        self.answered = 0  # rows answered so far (earlier runs' too), told to each worker with each chunk
        self.idle: list = []
        self.loading: dict = {}  # ready() reference -> worker still loading its teacher
        self.started: list = []  # every worker started, to kill at the end

    def __enter__(self) -> ClusterTeacher:
        ray, cfg = connect(self.cfg), self.cfg
        try:
            self._check_fits()
            where = f"the Ray cluster at {cfg.ray_address}" if cfg.ray_address else "a Ray runtime started here"
            print(f"annotate: starting {cfg.workers} worker(s) on {where}; each loads the teacher once")
            for _ in range(cfg.workers):  # every worker loads its teacher before the first chunk, as with local
                self._start()
            nodes = set()
            while self.loading:
                (ref,), _ = ray.wait(list(self.loading), num_returns=1)
                nodes.add(self._loaded(ref))
            print(f"annotate: {cfg.workers} worker(s) ready on {len(nodes)} node(s)")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.started:
            try:
                self.ray.kill(worker)
            except Exception:  # already gone
                pass
        self.ray.shutdown()

    def _check_fits(self) -> None:
        """A worker the cluster cannot place would wait for ever: one line instead."""
        total = self.ray.cluster_resources()
        for what, need in (("CPU", self.cfg.worker_cpus), ("GPU", self.cfg.worker_gpus)):
            if need and total.get(what, 0) < need:
                raise UserError(
                    f"--worker-{what.lower()}s {need:g}: expected a cluster with at least that many {what}s; found "
                    f"{total.get(what, 0):g}; lower it, or add nodes to the cluster (docs/scale.md)"
                )

    def spent(self) -> float:
        from distillery.annotate.hosted import cost

        return cost(self.usage, self.cfg.settings)

    def _start(self) -> None:
        """One more worker, loading its teacher (its ready() answers once it has)."""
        ray, cfg = self.ray, self.cfg
        settings = {**cfg.flat(), "engine": "local"}
        if os.path.exists(cfg.teacher):  # a model folder or file named relative to here: the same one on every node
            settings["teacher"] = os.path.abspath(cfg.teacher)
        secrets = [getattr(cfg.settings, "api_key_env", ""), "HF_TOKEN"]  # a hosted key, a hub token: by name only
        env = {name: os.environ[name] for name in secrets if name and os.environ.get(name)}
        worker = (
            ray.remote(TeacherWorker)
            .options(
                num_cpus=cfg.worker_cpus,
                num_gpus=cfg.worker_gpus,
                max_restarts=0,
                scheduling_strategy="SPREAD",
                runtime_env={"env_vars": env} if env else None,
            )
            .remote(settings, asdict(self.task), max(1, int(cfg.worker_cpus)))
        )
        self.started.append(worker)
        self.loading[worker.ready.remote()] = worker

    def _loaded(self, ref) -> str:
        """Take a worker whose teacher loaded into the pool (its node returned); one that did not: the stop."""
        worker = self.loading.pop(ref)
        try:
            node, error = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as err:  # died while loading: killed, out of memory
            node, error = "a node", f"the worker died while loading it ({_one_line(err)})"
        if error:
            raise UserError(
                f"--engine ray: the worker on {node} could not load the teacher {self.cfg.teacher}: {error}; the "
                "chunks already written "
                "are kept; give that worker what it needs (the weights, a hub token, memory) and rerun"
            )
        self.idle.append(worker)
        return node

    def score(self, texts: list[str]) -> list:
        """The annotations of ``texts`` from one worker (content-free calibration's few inputs)."""
        return next(iter(self.score_chunks([(0, texts)])))[1]

    def score_chunks(self, chunks: list[tuple[int, list[str]]]):
        """Yield ``(chunk index, annotations)`` for each ``(chunk index, texts)``, as workers finish them."""
        ray = self.ray
        queue = deque(chunks)
        in_flight: dict = {}  # score() reference -> (worker, chunk)
        deaths = 0
        while queue or in_flight:
            while self.idle and queue:
                worker, chunk = self.idle.pop(), queue.popleft()
                in_flight[worker.score.remote(chunk[1], self.answered)] = (worker, chunk)
            (ref,), _ = ray.wait([*self.loading, *in_flight], num_returns=1)
            if ref in self.loading:
                self._loaded(ref)
                continue
            worker, chunk = in_flight.pop(ref)
            try:
                results, usage = ray.get(ref)
            except ray.exceptions.RayActorError as err:  # killed, out of memory, its node lost: the chunk goes again
                deaths += 1
                if deaths > DEATHS_PER_WORKER * self.cfg.workers:
                    raise UserError(
                        f"--engine ray: {deaths} workers died (the last: {_one_line(err)}); the chunks already "
                        "written are kept; see the workers' logs (ray logs), then rerun"
                    ) from None
                tqdm.write(f"annotate: a worker died ({_one_line(err)}); chunk {chunk[0]} goes to another worker")
                self.started.remove(worker)
                queue.appendleft(chunk)
                self._start()
                continue
            except ray.exceptions.RayTaskError as err:  # the teacher's own error (a bad key, ...): as with local
                raise (err.cause if isinstance(err.cause, BaseException) else err) from None
            for key, value in usage.items():
                self.usage[key] = self.usage.get(key, 0) + value
            self.answered += sum(a.error_type == "" for a in results)
            self.idle.append(worker)
            yield chunk[0], results
