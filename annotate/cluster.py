"""``--engine ray``: the teacher on the workers of a Ray cluster, the run folder on this machine.

This process (the driver) stays what it is with ``--engine local``: it plans the chunks, skips the
finished ones, holds the run folder's lock and is its one writer (atomic chunk writes, manifest
checksums, calibration at the end). Each worker is a Ray actor that loads the teacher once (any
registered backend, built by the same code as the local path) and scores whole chunks with
:func:`~distillery.annotate.backends.score_rows`, so its chunks equal a local run's. Workers return the
teacher's answers and never write into ``--out``; the cluster needs no shared filesystem.

Before Ray starts, the driver checks what it can alone (:func:`preflight`): the API key's variable is set,
``--ray-address`` answers (and a ``ray://`` one has the Ray Client installed), and a Ray runtime started here
has room for the workers on this machine's own CPUs and GPUs; right after connecting, that the cluster's nodes
can place every worker. Each is one line at once instead of a wait without end. A key reaches the workers
as an argument of their constructor, never in a ``runtime_env`` (Ray writes those into its logs).

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
import re
import socket
import tempfile
from collections import deque
from dataclasses import asdict

from tqdm.auto import tqdm

from distillery.annotate.teacher import Teacher, TeacherSpec
from distillery.core.errors import UserError

__all__ = ["ClusterTeacher", "TeacherWorker", "connect", "import_ray", "preflight"]

DEATHS_PER_WORKER = 3  # worker deaths the run absorbs per --workers before it stops (the same chunk kills every one)
PROBE_S = 5.0  # seconds a --ray-address has to accept a connection
HOST_PORT = re.compile(r"(ray://)?(\[[^\]]+\]|[^:/\s]+):(\d+)")
HERE = "leave --ray-address empty for a Ray runtime started for this run"


def import_ray():
    """Ray, or the one line that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise ImportError("--engine ray needs Ray: pip install 'distillery[ray]'") from None
    return ray


def preflight(cfg) -> None:
    """What the driver checks before any Ray process starts, each a one-line :class:`UserError`: Ray is
    installed; a hosted teacher's key variable is set; ``--ray-address`` answers; a runtime started here
    has room for the workers on this machine (it never declares more CPUs or GPUs than the machine has)."""
    import_ray()
    if hasattr(getattr(cfg, "settings", None), "api_key_env"):  # a hosted teacher: the key on the driver,
        from distillery.annotate.hosted import checked_key  # which hands it to the workers

        checked_key(cfg.settings)
    if cfg.ray_address:
        _check_address(cfg.ray_address)
    else:
        _check_machine(cfg)


def _check_address(address: str) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` (also ``auto`` through ``RAY_ADDRESS``) that accepts a connection
    within PROBE_S seconds; a ``ray://`` one with the Ray Client installed."""
    shown, target = f"--ray-address {address}", address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS", "")
        shown = f"--ray-address auto (RAY_ADDRESS={target})"
    found = HOST_PORT.fullmatch(target)
    if not found:  # auto without RAY_ADDRESS: ray.init looks for a cluster on this machine
        return
    client, host, port = found.group(1), found.group(2).strip("[]"), int(found.group(3))
    if client:
        try:
            import grpc  # noqa: F401  (what Ray's client needs)
        except ImportError:
            raise UserError(
                f"{shown}: a ray:// address needs the Ray Client; found it not installed; pip install "
                f"'ray[client]=={import_ray().__version__}' (or pip install 'distillery[ray]'), or {HERE}"
            ) from None
    try:
        socket.create_connection((host, port), timeout=PROBE_S).close()
    except OSError as err:
        why = f"no answer within {PROBE_S:g} s" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        start = f"ray start --head --port {port}" if not client else f"ray start --head --ray-client-server-port {port}"
        raise UserError(
            f"{shown}: expected a Ray cluster there; found nothing answering at {host}:{port} ({why}); start one "
            f"there ({start}) or fix the address, or {HERE}"
        ) from None


def _machine_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _check_machine(cfg) -> None:
    """Workers that fit this machine's own CPUs and GPUs: what a runtime started here declares."""
    for what, each, have in (
        ("cpus", cfg.worker_cpus, os.cpu_count() or 1),
        ("gpus", cfg.worker_gpus, _machine_gpus() if cfg.worker_gpus else 0),
    ):
        if each and cfg.workers * each > have + 1e-9:
            raise UserError(
                f"--workers {cfg.workers} x --worker-{what} {each:g}: expected at most the {have} "
                f"{what[:-1].upper()}(s) of this machine (a Ray runtime started here declares no more); found "
                f"{cfg.workers * each:g}; lower --workers or --worker-{what}, or pass the --ray-address of a "
                "cluster with room for them"
            )


def _check_room(ray, cfg) -> None:
    """Every worker placeable on the nodes of the cluster (their capacity; work of others there only waits)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]

    def fits(have: float, each: float) -> float:
        return math.inf if not each else math.floor(have / each + 1e-9)

    room = sum(min(fits(n.get("CPU", 0), cfg.worker_cpus), fits(n.get("GPU", 0), cfg.worker_gpus)) for n in nodes)
    if room < cfg.workers:
        asked = f"--workers {cfg.workers} x --worker-cpus {cfg.worker_cpus:g}"
        asked += f" and --worker-gpus {cfg.worker_gpus:g}" if cfg.worker_gpus else ""
        where = f"the cluster at {cfg.ray_address}" if cfg.ray_address else "the Ray runtime started here"
        cpus, gpus = (sum(n.get(k, 0) for n in nodes) for k in ("CPU", "GPU"))
        raise UserError(
            f"{asked}: expected room for {cfg.workers} worker(s); {where} has room for {room:g} ({len(nodes)} "
            f"node(s), {cpus:g} CPUs and {gpus:g} GPUs in all); lower --workers, --worker-cpus or --worker-gpus, "
            "or add nodes to the cluster (docs/scale.md)"
        )


def connect(cfg):
    """Ray, connected to ``--ray-address`` (or to a runtime started here for this run, declaring this
    machine's CPUs), after :func:`preflight` and with every worker placeable (Ray waits for ever on an
    actor it cannot place). Workers' output stays on the workers."""
    preflight(cfg)
    ray = import_ray()
    here = cfg.ray_address == ""
    try:
        ray.init(
            address=cfg.ray_address or "local",  # "local": never RAY_ADDRESS's cluster when none was asked for
            num_cpus=(os.cpu_count() or 1) if here else None,
            include_dashboard=False if here else None,
            log_to_driver=False,
            logging_level="ERROR",
        )
    except ConnectionError as err:  # auto with no cluster on this machine
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"--ray-address {cfg.ray_address}: expected a Ray cluster; found none ({first}); start one (ray start "
            f"--head), or {HERE}"
        ) from None
    try:
        _check_room(ray, cfg)
    except BaseException:
        ray.shutdown()
        raise
    return ray


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class TeacherWorker:
    """One worker (a Ray actor): loads the teacher once, then scores whole chunks.

    A teacher that cannot load is not raised here (Ray would retry or hide it behind an actor
    error): :meth:`ready` reports it, with the worker's node."""

    def __init__(self, settings: dict, task: dict, threads: int, secrets: dict | None = None):
        self.node = f"node {socket.gethostname()}"
        self.error = None
        os.environ.update(secrets or {})  # the key, by the name the teacher reads (this process is this worker's)
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

        self.teacher.answered = max(self.teacher.answered, answered)
        before = dict(self.teacher.usage or {})
        results = score_rows(self.teacher, texts, self.limits, self.max_chars)
        return results, {k: v - before.get(k, 0) for k, v in (self.teacher.usage or {}).items()}

    def spec(self) -> dict:
        """The teacher as its backend describes itself (:class:`~distillery.core.annotations.TeacherSpec`)."""
        return asdict(self.teacher.spec())


class ClusterTeacher(Teacher):
    """The driver's side: starts ``--workers`` workers on the cluster and hands them chunks.

    Used as a context manager: on leaving it (the end, an error, Ctrl-C) every worker is killed
    and a Ray runtime this process started is stopped."""

    def __init__(self, cfg, task):
        self.ray = import_ray()
        self.cfg, self.task = cfg, task
        self.usage: dict = {}
        self.answered = 0  # rows answered so far (earlier runs' too), told to each worker with each chunk
        self.teacher_spec = TeacherSpec(model=cfg.teacher)
        self.idle: list = []
        self.loading: dict = {}  # ready() reference -> worker still loading its teacher
        self.started: list = []  # every worker started, to kill at the end

    def __enter__(self) -> ClusterTeacher:
        ray, cfg = connect(self.cfg), self.cfg
        try:
            where = f"the Ray cluster at {cfg.ray_address}" if cfg.ray_address else "a Ray runtime started here"
            print(f"annotate: starting {cfg.workers} worker(s) on {where}; each loads the teacher once")
            for _ in range(cfg.workers):  # every worker loads its teacher before the first chunk, as with local
                self._start()
            nodes = set()
            while self.loading:
                (ref,), _ = ray.wait(list(self.loading), num_returns=1)
                nodes.add(self._loaded(ref))
            print(f"annotate: {cfg.workers} worker(s) ready on {len(nodes)} node(s)")
            # the teacher as one worker's backend describes it (every worker loads the same one), asked while
            # the workers live: annotate records it after they are gone
            self.teacher_spec = TeacherSpec(**ray.get(self.idle[0].spec.remote()))
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

    def spent(self) -> float:
        from distillery.annotate.hosted import cost

        return cost(self.usage, self.cfg.settings)

    def spec(self) -> TeacherSpec:
        return self.teacher_spec

    def _start(self) -> None:
        """One more worker, loading its teacher (its ready() answers once it has)."""
        ray, cfg = self.ray, self.cfg
        settings = {**cfg.flat(), "engine": "local"}
        if os.path.exists(cfg.teacher):  # a model folder or file named relative to here: the same one on every node
            settings["teacher"] = os.path.abspath(cfg.teacher)
        # a hosted key, a hub token: constructor arguments (kept in memory), never a runtime_env (Ray logs those)
        names = [getattr(cfg.settings, "api_key_env", ""), "HF_TOKEN"]
        secrets = {name: os.environ[name] for name in names if name and os.environ.get(name)}
        worker = (
            ray.remote(TeacherWorker)
            .options(
                num_cpus=cfg.worker_cpus,
                num_gpus=cfg.worker_gpus,
                max_restarts=0,
                scheduling_strategy="SPREAD",
            )
            .remote(settings, asdict(self.task), max(1, int(cfg.worker_cpus)), secrets)
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
