"""The distill stage: load chunks -> build dataloaders -> train loop -> save the best student.

Run it with::

    distillery distill --out data/runs/demo            # reads data/runs/demo/annotations
    distillery distill --student-model roberta-base --alpha 0.5 --temperature 2 --out DIR
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from transformers import get_linear_schedule_with_warmup

from distillery.annotate.config import AnnotateConfig
from distillery.core.errors import UserError
from distillery.core.lock import locked
from distillery.core.models import pick_device
from distillery.core.run import Run
from distillery.core.rundir import (
    claim_folder,
    guard_files,
    install,
    make_folder,
    remove_leftovers,
    remove_owned,
    temporary_name,
    write_json,
    write_text,
)
from distillery.core.studentmeta import STUDENT_NAMES
from distillery.distill.checkpoint import (
    CHECKPOINTS,
    check_same_settings,
    find_checkpoint,
    keep_trainable_weights,
    online_fingerprint,
    reason,
    training_settings,
    write_refused,
)
from distillery.distill.config import DistillConfig
from distillery.distill.data import build_dataloaders, covering_length, load_training_rows
from distillery.distill.loop import Training, train, warm_start_head
from distillery.distill.losses import class_weights, hard_label_counts, logit_offsets
from distillery.distill.online import OnlineTeacher, Targets, load_online_rows
from distillery.distill.scaling import fit_student_scaling
from distillery.distill.selection import majority_warning
from distillery.student.card import write_card
from distillery.student.kinds import STUDENT_FILE, load_student, save_student, student_kind, trainable_parameters

__all__ = ["Training", "distill"]


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA max allocated on GPU; max resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def distill(cfg: DistillConfig, source: AnnotateConfig | None = None) -> Path:
    """Train the student on the annotations of ``cfg.out``, save it with its model card; returns the saved
    student dir.

    Under ``accelerate launch`` (or torchrun) each optimizer step's batch is split across the
    processes, so N processes see the same rows per step as one. ``--teacher-mode online``
    needs ``source`` (the data and teacher settings of annotate) instead of annotation chunks.
    One process at a time writes the student's folder.
    """
    if cfg.engine == "ray":  # the same function on each Ray Train worker (distill/cluster.py)
        from distillery.distill.cluster import distill_on_ray

        return distill_on_ray(cfg, source, distill)
    out_dir = Run.of(cfg).student
    with locked(out_dir, "distill"):  # OUT is only read (chunks are checked against their checksums): sweeps share it
        student = _distill(cfg, source, out_dir)
        if os.environ.get("RANK", "0") == "0":  # under accelerate launch, rank 0 writes the card (one writer)
            write_card(student)  # the model card: the API and the command give the same folder
        return student


def _distill(cfg: DistillConfig, source: AnnotateConfig | None, out_dir: Path) -> Path:
    """The stage in its steps: prepare, restore a checkpoint (--resume), train, save; then the learning curve."""
    set_seed(cfg.seed)
    claim_folder(
        out_dir, cfg.overwrite, flag="--student"
    )  # --overwrite: beside files of someone else's, never over them
    remove_leftovers(out_dir)  # a killed save's staged student, a killed clean-up's checkpoint
    guard_files(
        out_dir, [*STUDENT_NAMES, *(CHECKPOINTS if cfg.checkpoint_every or cfg.resume else ())], flag="--student"
    )
    if cfg.resume and (out_dir / "train_summary.json").is_file() and find_checkpoint(out_dir) is None:
        summary = json.loads((out_dir / "train_summary.json").read_text())
        print(
            f"distill: {out_dir} finished training ({summary['steps']} steps); nothing to resume "
            "(run without --resume to train again)"
        )
        return out_dir
    run = prepare(cfg, source, out_dir)
    if cfg.resume:
        restore(run)
    started = time.perf_counter()
    train(run)
    save(run, time.perf_counter() - started)
    if cfg.learning_curve and cfg.teacher_mode == "offline":
        n_rows = len(run.rows.train) + len(run.rows.val)
        for share in (25, 50):
            run.accelerator.print(f"distill: learning curve, {share}% of the training rows")
            distill(
                replace(
                    run.cfg,
                    learning_curve=False,
                    max_train_rows=n_rows * share // 100,  # the settings resolved on all rows
                    student=str(Run.of(cfg).share_student(f"{share}pct")),
                ),
                source,
            )
    if cfg.ceiling and cfg.teacher_mode == "offline":
        ceiling = Run.of(cfg).ceiling
        run.accelerator.print(f"distill: the gold-label ceiling, the same student on the gold labels, into {ceiling}")
        distill(
            replace(run.cfg, ceiling=False, learning_curve=False, hard_labels="gold", alpha=0.0, student=str(ceiling)),
            source,
        )
    return out_dir


def prepare(cfg: DistillConfig, source: AnnotateConfig | None, out_dir: Path) -> Training:
    """Rows, teacher (online), student, data loaders, optimizer and schedule, under accelerate."""
    device = pick_device(cfg.device)
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision="bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no",
    )
    say = accelerator.print
    if accelerator.is_main_process:  # not a finished student until the new one is saved whole
        for name in ("train_summary.json", STUDENT_FILE):
            remove_owned(out_dir / name)
    targets = Targets()  # offline: each batch carries its labels, read from the chunks
    if cfg.teacher_mode == "online":
        if source is None:
            raise UserError("--teacher-mode online needs the data and teacher settings (--data, --teacher, ...)")
        rows = load_online_rows(cfg, source)
        online = OnlineTeacher(source, rows.labels, rows.train["text"].tolist()[:256])
        targets = Targets(online, gold_labels=cfg.hard_labels == "gold")
        say(f"distill: online teacher {source.teacher}, calibration {source.calibrate}")
    else:
        rows = load_training_rows(cfg)
        missing = sum(int((part["gold"] == "").sum()) for part in (rows.train, rows.val)) if cfg.ceiling else 0
        if missing:  # --ceiling needs gold everywhere: said before the student trains, not after
            raise UserError(
                f"--ceiling: expected a gold label on every training row; found {missing} without one; leave "
                "--ceiling out, or give those rows a label (--label-column)"
            )
    say(
        f"distill: {len(rows.train)} train rows, {len(rows.val)} validation rows, {rows.n_failed} failed "
        "annotations left out"
        + (f"; {rows.n_reviewed} rows take their hard label from the review" if rows.n_reviewed else "")
    )
    tokenizer, model = load_student(cfg, rows.labels)
    trainable, total = trainable_parameters(model)
    say(
        f"distill: {cfg.student_kind} student, {trainable:,} of {total:,} parameters trainable "
        f"({100 * trainable / total:.2f}%)"
    )
    cfg = with_automatic_settings(cfg, tokenizer, model, rows.train["text"].tolist())
    train_dl, val_dl = build_dataloaders(cfg, tokenizer, rows)
    sampler = train_dl.batch_sampler
    if cfg.head_warmup_epochs and not cfg.resume:
        warm_start_head(model, train_dl, cfg, targets, device)
    # fused: one kernel for the whole update (what Trainer uses too); ~10% of a CPU step otherwise.
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    steps_per_epoch = -(-len(train_dl) // cfg.grad_accum)
    epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))  # a small set gets more epochs
    steps = epochs * steps_per_epoch
    say(
        f"distill: {epochs} epochs of {steps_per_epoch} steps (--epochs {cfg.epochs}, --min-steps "
        f"{cfg.min_steps}), lr {cfg.lr:g}, max length {cfg.max_length}"
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
    model, optimizer, train_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, scheduler)
    accelerator.register_save_state_pre_hook(keep_trainable_weights)
    eval_at = {max(1, round(steps_per_epoch * (i + 1) / cfg.evals_per_epoch)) for i in range(cfg.evals_per_epoch)}
    weights, offsets = class_weights(cfg.class_weights, rows), logit_offsets(cfg.logit_adjustment, rows)
    if offsets is not None:
        say(
            "distill: logit adjustment "
            f"{', '.join(f'{lab} {o:+.2f}' for lab, o in zip(rows.labels, offsets.tolist()))} "
            f"(--logit-adjustment {cfg.logit_adjustment:g})"
        )
    if weights is not None:
        say(
            "distill: class weights "
            f"{', '.join(f'{lab} {w:.2f}' for lab, w in zip(rows.labels, weights.tolist()))} "
            f"(--class-weights {cfg.class_weights})"
        )
    return Training(
        cfg,
        out_dir,
        accelerator,
        device,
        rows,
        targets,
        tokenizer,
        model,
        optimizer,
        scheduler,
        train_dl,
        val_dl,
        sampler,
        epochs,
        steps,
        eval_at,
        (trainable, total),
        training_settings(cfg, rows.fingerprint or online_fingerprint(rows, source)),
        weights,
        offsets,
    )


def restore(run: Training) -> None:
    """--resume: load the newest whole checkpoint, refusing one trained with other settings."""
    ckpt_dir = find_checkpoint(run.out_dir)
    if ckpt_dir is None:
        raise UserError(
            f"--resume: expected a checkpoint in {run.out_dir / 'checkpoint'}; found none; run without --resume "
            "(and with --checkpoint-every N)"
        )
    check_same_settings(ckpt_dir, run.settings)
    run.accelerator.load_state(str(ckpt_dir), strict=False)  # the frozen weights come from the base, not the checkpoint
    run.progress = json.loads((ckpt_dir / "progress.json").read_text())
    if (ckpt_dir / "best.pt").is_file():
        run.best_state = torch.load(ckpt_dir / "best.pt")
    if run.progress["batches"] >= len(run.train_dl):  # the checkpoint closed an epoch
        run.progress.update(epoch=run.progress["epoch"] + 1, batches=0)
    elif run.progress["batches"]:
        # Opening the loader mid-epoch draws from torch's RNG; the first run did not.
        run.resume_rng = torch.load(ckpt_dir / "torch_rng.pt")
    run.accelerator.print(f"distill: resuming at optimizer step {run.progress['step']} of {run.steps}")


def save(run: Training, train_seconds: float) -> None:
    """The best weights saved as the student, with its config, log and summary (the summary last:
    its presence marks a finished run); the checkpoints go."""
    accelerator, rows, progress, out_dir = run.accelerator, run.rows, run.progress, run.out_dir
    accelerator.wait_for_everyone()
    student = accelerator.unwrap_model(run.model)
    if run.best_state is not None:
        student.load_state_dict(run.best_state, strict=False)
    if accelerator.is_main_process:
        best = progress["best"] or {}
        counts = hard_label_counts(rows)
        summary = {
            "train_rows": len(rows.train),
            "val_rows": len(rows.val),
            "failed_rows_left_out": rows.n_failed,
            "reviewed_hard_labels": rows.n_reviewed,
            "epochs": run.epochs,
            "steps": run.steps,
            "lr": run.cfg.lr,
            "max_length": run.cfg.max_length,
            "train_seconds": train_seconds,
            "processes": accelerator.num_processes,
            "train_rows_per_s": run.rows_seen * accelerator.num_processes / train_seconds,
            "best_val_accuracy": best.get("val_accuracy"),
            "best_step": best.get("step"),
            "lowest_val_loss_step": best.get("lowest_step", best.get("step")),
            "labels": rows.labels,
            # rows per class by their hard labels (evaluate says how many more a dropped class needs)
            "train_label_counts": None if counts is None else dict(zip(rows.labels, counts.int().tolist())),
            "class_weights": None if run.class_weights is None else dict(zip(rows.labels, run.class_weights.tolist())),
            "logit_offsets": None if run.logit_offsets is None else dict(zip(rows.labels, run.logit_offsets.tolist())),
            "trainable_parameters": run.parameters[0],
            "total_parameters": run.parameters[1],
            "peak_memory_bytes": peak_memory_bytes(run.device),
        }
        summary["temperature"], summary["class_bias"] = fit_student_scaling(
            run.cfg.scaling, student, run.tokenizer, rows, run.targets.online, accelerator.print
        )
        summary["best_at_least_majority"] = best.get("at_least_majority")
        staged = make_folder(out_dir / temporary_name("student"))  # saved whole, then moved beside the user's files
        try:
            save_student(
                student, run.tokenizer, staged, run.cfg, rows.labels, summary["temperature"], summary["class_bias"]
            )
            install(staged, out_dir, last=(STUDENT_FILE,))
        except Exception as err:
            shutil.rmtree(staged, ignore_errors=True)  # a temporary name: ours, and never the student
            if not write_refused(err):
                raise
            raise UserError(
                f"could not write the student to {out_dir} ({reason(err)}); it is not saved (no partial student "
                "counts as one): free space, then rerun (with --resume to go on from a checkpoint, if any was saved)"
            ) from err
        write_text(out_dir / "distillery_config.yaml", yaml.safe_dump(run.cfg.flat(), sort_keys=False))
        write_text(out_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in progress["log"]))
        write_json(out_dir / "train_summary.json", summary)  # last: its presence marks a finished run
        for name in CHECKPOINTS:  # a finished run is not resumed (a folder of someone else's by that name stays)
            remove_owned(out_dir / name)
        kept = (
            f"step {best['step']}, val accuracy {best['val_accuracy']:.4f}"
            + (
                f"; the lowest val loss was at step {best['lowest_step']}"
                if best.get("lowest_step") != best["step"]
                else ""
            )
            if best
            else "the last step"
        )
        accelerator.print(
            f"distill: saved student to {out_dir} ({train_seconds:.0f} s, kept {kept}, "
            f"peak memory {summary['peak_memory_bytes'] / 2**30:.2f} GiB)"
        )
        warning = majority_warning(progress["best"])
        if warning:
            accelerator.print(warning)
    accelerator.wait_for_everyone()


def with_automatic_settings(cfg: DistillConfig, tokenizer, model, texts: list[str]) -> DistillConfig:
    """Resolve the settings left at 0 (automatic): lr per student kind, max length from the data."""
    limits = [
        n
        for n in (getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length)
        if n and n < 100_000
    ]
    return replace(
        cfg,
        lr=cfg.lr or student_kind(cfg.student_kind).default_lr,
        max_length=cfg.max_length or covering_length(tokenizer, texts, min(limits) if limits else None),
    )
