"""``distill --engine ray``: the training loop of ``--engine local`` under Ray Train's ``TorchTrainer``.

Each of ``--workers`` Ray Train workers runs :func:`~distillery.distill.train.distill` itself:
Ray Train starts the process group (gloo on CPUs, NCCL on GPUs) and sets ``RANK`` and
``WORLD_SIZE``, so accelerate inside the loop sees what it sees under ``accelerate launch``: each
optimizer step's batch is split across the workers, rank 0 alone takes the student folder's lock
and writes the student, its card and its checkpoints. The run folder must be on a filesystem
every node mounts (as Ray Train's own checkpoints need); on one machine it always is.

A worker that dies (kill -9, out of memory) ends the run with one line: ``--resume`` goes on from
the last checkpoint (``--checkpoint-every N``), as after a kill of a local run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from distillery.core.errors import UserError

__all__ = ["distill_on_ray"]


def _loop(config: dict) -> None:
    """One Ray Train worker: the local training loop on this worker's share of every batch."""
    from distillery.annotate.config import AnnotateConfig
    from distillery.core.models import quiet_third_party
    from distillery.distill.config import DistillConfig

    quiet_third_party()
    os.chdir(config["cwd"])  # the run folder and the student as the command named them
    source = AnnotateConfig.from_flat(config["source"], strict=False) if config["source"] else None
    config["distill"](DistillConfig.from_flat(config["cfg"]), source)


def distill_on_ray(cfg, source, distill) -> Path:
    """Train as ``distill`` (:func:`~distillery.distill.train.distill`, passed in: it calls this) does, on
    ``cfg.workers`` Ray Train workers; returns the student folder (written by rank 0)."""
    from distillery.annotate.cluster import connect
    from distillery.core.run import Run

    ray = connect(cfg)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = tempfile.mkdtemp(prefix="distillery-ray-train-")  # Ray Train's own run state, never --out
    resources = {"CPU": cfg.worker_cpus, **({"GPU": cfg.worker_gpus} if cfg.worker_gpus else {})}
    local = dataclasses.replace(cfg, engine="local")
    each = ", ".join(f"{v:g} {k}" for k, v in resources.items())
    print(f"distill: training on {cfg.workers} Ray Train worker(s) ({each} each)")
    trainer = TorchTrainer(
        _loop,
        train_loop_config={
            "cfg": local.flat(),
            "source": source.flat() if source is not None else None,
            "cwd": os.getcwd(),
            "distill": distill,  # sent by reference: each worker imports it
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=bool(cfg.worker_gpus), resources_per_worker=resources
        ),
        run_config=RunConfig(storage_path=storage, failure_config=FailureConfig(max_failures=0)),
    )
    try:
        trainer.fit()
    except Exception as err:  # a worker died, or the loop raised: one line, the checkpoints kept
        cause = err
        while getattr(cause, "__cause__", None) is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise UserError(
            f"--engine ray: training stopped: {type(cause).__name__}: {first}; rerun with --resume to go on "
            "from the last checkpoint (--checkpoint-every N saves them)"
        ) from None
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    student = Run.of(cfg).student
    summary = json.loads((student / "train_summary.json").read_text())
    print(
        f"distill: saved student to {student} ({summary['steps']} steps on {cfg.workers} workers, kept step "
        f"{summary.get('best_step')}; the loss curve: {student / 'train_log.jsonl'})"
    )
    return student
