"""The distill stage: load chunks -> build dataloaders -> train loop -> save the best student.

Run it with::

    distillery distill --out data/runs/demo            # reads data/runs/demo/annotations
    distillery distill --student-model roberta-base --alpha 0.5 --temperature 2 --out DIR
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors import SafetensorError
from sklearn.metrics import f1_score
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from distillery.annotate.chunks import label_columns
from distillery.annotate.config import AnnotateConfig
from distillery.core.errors import UserError, full_disk
from distillery.core.models import pick_device, predict_probabilities
from distillery.core.run import Run
from distillery.core.rundir import (
    claim_folder,
    guard_files,
    install,
    locked,
    make_folder,
    remove_leftovers,
    remove_owned,
    rows_fingerprint,
    seal_folder,
    temporary_name,
    write_json,
    write_text,
)
from distillery.core.studentmeta import STUDENT_NAMES
from distillery.core.tasks import load_task
from distillery.distill.config import DistillConfig
from distillery.distill.data import TrainingRows, build_dataloaders, covering_length, load_training_rows
from distillery.distill.losses import hybrid_kd_loss, hybrid_kd_rows
from distillery.distill.online import OnlineTeacher, load_online_rows
from distillery.distill.scaling import pick_scaling
from distillery.student.card import write_card
from distillery.student.kinds import STUDENT_FILE, load_student, save_student, student_kind, trainable_parameters

__all__ = ["better", "distill", "evaluate_student", "fit_student_scaling", "keep", "majority_warning", "select"]


def with_teacher(batch: dict, online: OnlineTeacher | None, gold_labels: bool) -> dict:
    """Offline: the batch as read from the chunks. Online: soft and hard labels from the teacher."""
    if online is None:
        return batch
    device = batch["input_ids"].device
    logprobs, labels = online.targets(batch["texts"], batch["labels"] if gold_labels else None)
    return {**batch, "teacher_logprobs": logprobs.to(device), "labels": labels.to(device)}


@torch.no_grad()
def evaluate_student(
    model,
    dataloader,
    cfg: DistillConfig,
    online: OnlineTeacher | None = None,
    weights: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
) -> dict:
    """Validation loss parts (weighted by class like the training loss, on the logits adjusted like its),
    each row's loss, and agreement and macro-F1 of the student's own logits against the hard labels."""
    model.eval()
    sums = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
    predicted, hard, rows = [], [], []
    for batch in dataloader:
        batch = with_teacher(batch, online, cfg.hard_labels == "gold")
        batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = (batch["teacher_logprobs"], batch["labels"], cfg.alpha, cfg.temperature, weights, cfg.hard_loss)
        adjusted = logits if offsets is None else logits + offsets.to(logits.device)
        for key, value in zip(("loss", "kd", "ce"), hybrid_kd_loss(adjusted, *targets)):
            sums[key] += value.item() * len(batch["labels"])
        rows.append(hybrid_kd_rows(adjusted, *targets).cpu())
        predicted.append(logits.argmax(-1).cpu())
        hard.append(batch["labels"].cpu())
    model.train()
    predicted, hard = torch.cat(predicted).numpy(), torch.cat(hard).numpy()
    known = hard >= 0
    macro_f1 = f1_score(hard[known], predicted[known], average="macro", zero_division=0) if known.any() else 0.0
    return {
        **{k: v / len(hard) for k, v in sums.items()},
        "val_accuracy": float((predicted == hard).mean()),
        "val_macro_f1": float(macro_f1),
        # what always answering the most common hard label scores: a student under it learned nothing
        "val_majority": float(np.bincount(hard[known]).max() / len(hard)) if known.any() else 0.0,
        "row_losses": torch.cat(rows).double().numpy(),  # each row's loss, for the paired comparison of passes
    }


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


@dataclass
class Training:
    """One training run between its steps: what :func:`prepare` built and the loop moves on."""

    cfg: DistillConfig
    out_dir: Path
    accelerator: Accelerator
    device: torch.device
    rows: TrainingRows
    online: OnlineTeacher | None
    tokenizer: object
    model: object
    optimizer: object
    scheduler: object
    train_dl: object
    val_dl: object
    sampler: object
    epochs: int
    steps: int
    eval_at: set
    parameters: tuple[int, int]
    settings: dict
    class_weights: torch.Tensor | None = None  # --class-weights: each row's weight by its class
    logit_offsets: torch.Tensor | None = None  # --logit-adjustment: TAU x log(class share), added in the loss only
    progress: dict = field(default_factory=lambda: {"epoch": 0, "batches": 0, "step": 0, "best": None, "log": []})
    best_state: dict | None = None
    resume_rng: torch.Tensor | None = None
    rows_seen: int = 0


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
    online = None
    if cfg.teacher_mode == "online":
        if source is None:
            raise UserError("--teacher-mode online needs the data and teacher settings (--data, --teacher, ...)")
        rows = load_online_rows(cfg, source)
        online = OnlineTeacher(source, rows.labels, rows.train["text"].tolist()[:256])
        say(f"distill: online teacher {source.teacher}, calibration {source.calibrate}")
    else:
        rows = load_training_rows(cfg)
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
        warm_start_head(model, train_dl, cfg, online, device)
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
        online,
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


def train(run: Training) -> None:
    """The epochs from where ``run.progress`` stands: one optimizer step per grad_accum micro-batches,
    validation at ``eval_at``, a checkpoint every --checkpoint-every steps."""
    cfg, accelerator, progress = run.cfg, run.accelerator, run.progress
    run.model.train()
    bar = tqdm(
        total=run.steps,
        initial=progress["step"],
        desc="distill",
        unit="step",
        disable=not accelerator.is_main_process,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )
    for epoch in range(progress["epoch"], run.epochs):
        skip = progress["batches"] if epoch == progress["epoch"] else 0
        batches = accelerator.skip_first_batches(run.train_dl, skip) if skip else run.train_dl
        batches.set_epoch(epoch)  # accelerate re-seeds the sampler from the loader's own epoch count
        run.sampler.set_epoch(epoch)
        for batch_index, batch in enumerate(batches, start=skip + 1):
            if run.resume_rng is not None:
                torch.set_rng_state(run.resume_rng)  # dropout continues exactly where the checkpoint left it
                run.resume_rng = None
            loss = train_step(run, batch)
            if not accelerator.sync_gradients and batch_index < len(run.train_dl):
                continue  # the optimizer steps once per grad_accum micro-batches
            progress["step"] += 1
            parts = accelerator.reduce(torch.stack([loss.total, loss.kd, loss.ce]).detach(), reduction="mean")
            record = {
                "epoch": epoch,
                "step": progress["step"],
                "loss": parts[0].item(),
                "kd": parts[1].item(),
                "ce": parts[2].item(),
                "lr": run.scheduler.get_last_lr()[0],
            }
            bar.update(1)
            bar.set_postfix(kd=f"{record['kd']:.3f}", ce=f"{record['ce']:.3f}", refresh=False)
            if run.val_dl is not None and -(-batch_index // cfg.grad_accum) in run.eval_at:
                validate(run, record)
            progress["log"].append(record)
            progress.update(epoch=epoch, batches=batch_index)
            if cfg.checkpoint_every and progress["step"] % cfg.checkpoint_every == 0:
                with checkpoint_writes(run.out_dir, progress["step"]):  # a full disk stops the run in one line
                    save_checkpoint(accelerator, run.out_dir, progress, run.best_state, run.settings)
        progress.update(epoch=epoch + 1, batches=0)
    bar.close()


def train_step(run: Training, batch: dict):
    """One micro-batch: forward, the hybrid KD loss, backward; the optimizer steps when accelerate syncs."""
    cfg, accelerator = run.cfg, run.accelerator
    batch = with_teacher(batch, run.online, cfg.hard_labels == "gold")
    with accelerator.accumulate(run.model):
        logits = run.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if run.logit_offsets is not None:
            logits = logits + run.logit_offsets.to(logits.device)
        loss = hybrid_kd_loss(
            logits,
            batch["teacher_logprobs"],
            batch["labels"],
            cfg.alpha,
            cfg.temperature,
            run.class_weights,
            cfg.hard_loss,
        )
        accelerator.backward(loss.total)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    run.rows_seen += len(batch["labels"])
    return loss


# what progress keeps of a validation pass
KEPT = ("step", "val_loss", "val_row_loss", "val_accuracy", "val_majority", "at_least_majority")


def validate(run: Training, record: dict) -> None:
    """Score the validation rows into ``record``; keep the weights :func:`keep` picks."""
    scores = evaluate_student(run.model, run.val_dl, run.cfg, run.online, run.class_weights, run.logit_offsets)
    row_losses = scores.pop("row_losses")
    record.update({k if k.startswith("val_") else f"val_{k}": v for k, v in scores.items()})
    record["at_least_majority"] = record["val_accuracy"] >= record["val_majority"]
    if select(run.progress, record, row_losses, first_step=run.cfg.keep_from * run.steps):
        run.best_state = {
            k: v.detach().cpu().clone()
            for k, v in run.accelerator.unwrap_model(run.model).named_parameters()
            if v.requires_grad
        }
    if run.accelerator.is_main_process:
        tqdm.write(
            f"  step {record['step']}: val loss {record['val_loss']:.4f}, val accuracy {record['val_accuracy']:.4f}, "
            f"val macro-F1 {record['val_macro_f1']:.4f}"
        )


def select(progress: dict, record: dict, row_losses: np.ndarray, first_step: float = 0) -> bool:
    """Note a validation pass in ``progress`` (its ``lowest`` pass so far, see :func:`better`); True when
    its weights are to be kept (:func:`keep`; ``progress["best"]`` is then this pass). A pass before
    ``first_step`` (``--keep-from``) is neither noted nor kept."""
    if record["step"] < first_step:
        return False
    record["val_row_loss"] = float(row_losses.mean())  # what keep() compares row by row (class weights as trained)
    if "lowest" not in progress and progress.get("best"):  # a checkpoint of a version before issue #28
        progress["lowest"] = dict(progress["best"])  # no row losses: a later pass must beat its loss
    if better(record, progress.get("lowest")):
        progress["lowest"] = {**{k: record[k] for k in KEPT}, "row_losses": row_losses.tolist()}
    if not keep(record, row_losses, progress["lowest"]):
        return False
    progress["best"] = {**{k: record[k] for k in KEPT}, "lowest_step": progress["lowest"].get("step")}
    return True


def better(record: dict, lowest: dict | None) -> bool:
    """Whether the validation ``record`` is the new ``lowest``: a pass that agrees with the hard labels at
    least as often as always answering their most common label beats one below that (on 50 noisy rows
    the lowest loss once fell on a step whose student answered worse than the majority label, issue
    #28); between two of the same kind, the lower validation loss wins."""
    if lowest is None:
        return True
    above, lowest_above = record.get("at_least_majority", True), lowest.get("at_least_majority", True)
    key = "val_row_loss" if "val_row_loss" in record and "val_row_loss" in lowest else "val_loss"
    return above > lowest_above or (above == lowest_above and record[key] < lowest[key])


def keep(record: dict, row_losses: np.ndarray, lowest: dict) -> bool:
    """Whether to keep the weights of this (latest) validation pass: it is of the same kind as the
    ``lowest`` (see :func:`better`) and its loss is within one standard error of the lowest one's,
    row by row (paired). So the student kept is the last pass the validation rows cannot tell from
    the best: on 50 rows the lowest loss often fell on an early, barely trained step (SST-2 70/30:
    step 58 of 319, macro-F1 retention 0.58 against 0.92 for the last within the error; the tuning
    half of benchmarks/every_class.py, docs/usage.md "Every class"), while a later pass has seen
    every row more often at a lower learning rate. A later pass clearly worse than the lowest
    (overfitting) is not kept."""
    if record.get("at_least_majority", True) != lowest.get("at_least_majority", True):
        return False
    if "row_losses" not in lowest:  # carried over from an older checkpoint
        return record["val_loss"] < lowest["val_loss"]
    diff = row_losses - np.asarray(lowest["row_losses"])
    error = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return bool(diff.mean() <= error)


def majority_warning(best: dict | None) -> str | None:
    """One line when the kept student agrees with its hard labels less often than always answering their
    most common label would, naming what to try; None otherwise."""
    if not best or best.get("at_least_majority", True):
        return None
    return (
        f"distill: warning: the student agrees with its hard labels on {best['val_accuracy']:.1%} of the "
        f"validation rows, less than always answering the most common label would ({best['val_majority']:.1%}); "
        "try more training rows, more --epochs or --min-steps, --class-weights none, or a larger --student-model"
    )


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
            "class_weights": None if run.class_weights is None else dict(zip(rows.labels, run.class_weights.tolist())),
            "logit_offsets": None if run.logit_offsets is None else dict(zip(rows.labels, run.logit_offsets.tolist())),
            "trainable_parameters": run.parameters[0],
            "total_parameters": run.parameters[1],
            "peak_memory_bytes": peak_memory_bytes(run.device),
        }
        summary["temperature"], summary["class_bias"] = fit_student_scaling(run, student)
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
                f"could not write the student to {out_dir} ({_reason(err)}); it is not saved (no partial student "
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


def fit_student_scaling(run: Training, model) -> tuple[float, list[float] | None]:
    """``--scaling``: the student's post-hoc ``(T, b)`` (distill/scaling.py) on the validation rows, T
    against their gold labels where every one has one (``bias``: else against the teacher), b
    (``bias`` only) against the teacher's calibrated distribution (online: the teacher scores them
    now). None under :data:`MIN_SCALING_ROWS` validation rows."""
    val, labels, say = run.rows.val, run.rows.labels, run.accelerator.print
    if run.cfg.scaling == "none":
        return 1.0, None
    if len(val) < MIN_SCALING_ROWS:
        say(f"distill: no post-hoc scaling ({len(val)} validation rows; it needs {MIN_SCALING_ROWS})")
        return 1.0, None
    texts = val["text"].tolist()
    model.eval()
    probs = predict_probabilities(model, run.tokenizer, texts, 32)  # whole texts, as the student reads them
    # Log-probabilities are the logits shifted per row: softmax(log p / T + b) = softmax(logits / T + b).
    logits = np.log(np.maximum(probs, np.finfo(np.float32).tiny))
    if run.online is None:
        teacher = val[label_columns(labels)].to_numpy(np.float64)
    else:
        teacher = run.online.targets(texts, None)[0].float().cpu().numpy()
    gold = None
    if "gold" in val and val["gold"].isin(labels).all():
        gold = val["gold"].map(labels.index).to_numpy()
    scaling = pick_scaling(logits, teacher, gold, run.cfg.scaling)
    say(f"distill: post-hoc scaling on {len(val)} validation rows: {scaling.said}")
    return scaling.temperature, scaling.bias


def class_weights(mode: str, rows: TrainingRows, cap: float = 10.0) -> torch.Tensor | None:
    """--class-weights: ``n / (labels x rows of the class)`` per class from the training rows' hard labels
    (at most ``cap``); ``auto`` uses them when the smallest class has under AUTO_SMALL_CLASS_ROWS rows
    and the largest over 1.5x as many, else none (None also for online rows, whose labels come batch by
    batch). Measured (docs/results.md, "Keep every class"): on 500 rows weights keep a class of ~25-50
    rows that the unweighted student drops; on 2,000 SST-2 rows at 80/20 (~340 in the small class) they
    over-correct (accuracy 0.759 against 0.822 unweighted, under the majority's 0.80)."""
    hard = rows.train["hard"] if "hard" in rows.train else None
    if mode == "none" or hard is None or (hard < 0).all():
        return None
    counts = torch.bincount(torch.tensor(hard[hard >= 0].to_numpy()), minlength=len(rows.labels)).double()
    if mode == "auto" and (counts.max() <= 1.5 * counts.min().clamp(min=1) or counts.min() >= AUTO_SMALL_CLASS_ROWS):
        return None
    weights = counts.sum() / (len(rows.labels) * counts.clamp(min=1))
    return weights.clamp(max=cap).float()


def logit_offsets(tau: float, rows: TrainingRows) -> torch.Tensor | None:
    """--logit-adjustment: ``TAU x log(share)`` per class, the shares of the training rows' hard labels
    (a class with none counts as one row); None when TAU is 0 or the rows are labelled online."""
    hard = rows.train["hard"] if "hard" in rows.train else None
    if tau == 0 or hard is None or (hard < 0).all():
        return None
    counts = torch.bincount(torch.tensor(hard[hard >= 0].to_numpy()), minlength=len(rows.labels)).double()
    offsets = tau * torch.log(counts.clamp(min=1) / counts.clamp(min=1).sum())
    return (offsets - offsets.mean()).float()


def warm_start_head(model, train_dl, cfg: DistillConfig, online: OnlineTeacher | None, device: torch.device) -> None:
    """LP-FT's first half (Kumar et al. 2022): fit only the classification head on the frozen
    model's features with the KD loss, so fine-tuning starts from a head that already fits."""
    names = student_kind(cfg.student_kind).head_names
    head = [p for n, p in model.named_parameters() if p.requires_grad and any(h in n for h in names)]
    frozen = [p for p in model.parameters() if p.requires_grad and all(p is not h for h in head)]
    for p in frozen:
        p.requires_grad_(False)
    model.to(device).eval()  # no dropout: the features are those of the frozen model
    optimizer = torch.optim.AdamW(head, lr=1e-3, weight_decay=cfg.weight_decay)
    for _ in range(cfg.head_warmup_epochs):
        for batch in train_dl:
            batch = with_teacher(batch, online, cfg.hard_labels == "gold")
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            hybrid_kd_loss(
                logits, batch["teacher_logprobs"], batch["labels"], cfg.alpha, cfg.temperature, hard_loss=cfg.hard_loss
            ).total.backward()
            optimizer.step()
            optimizer.zero_grad()
    for p in frozen:
        p.requires_grad_(True)
    model.train()


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


def keep_trainable_weights(models: list, weights: list[dict], output_dir: str) -> None:
    """accelerate's save hook: a checkpoint holds the trainable weights only.

    A LoRA student's frozen base is reloaded from its own checkpoint anyway, and a QLoRA base's
    4-bit state (absmax, quant_map, ...) is rejected by a strict load (issue #10).
    """
    for i, model in enumerate(models):
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        weights[i] = {name: tensor for name, tensor in weights[i].items() if name in trainable}


CHECKPOINTS = ("checkpoint", "checkpoint.new", "checkpoint.old")
MIN_SCALING_ROWS = 10  # validation rows --scaling needs (its likelihood-ratio tests are asymptotic)
AUTO_SMALL_CLASS_ROWS = 100  # --class-weights auto weights the classes only while the smallest has fewer training rows
IGNORED_ON_RESUME = {"resume", "checkpoint_every", "device", "overwrite", "learning_curve", "scaling"}
TRAINING_DATA = "training_data"  # the key of the data's fingerprint in a checkpoint's settings.json
# --teacher-mode online: the annotate settings that change what the teacher answers (a resume must not change them).
ONLINE_TEACHER_SETTINGS = (
    "backend",
    "teacher",
    "task",
    "labels",
    "max_prompt_tokens",
    "calibrate",
    "dtype",
    "load_in_4bit",
)


def training_settings(cfg: DistillConfig, data: dict) -> dict:
    """The resolved settings a checkpoint was trained with (those a resume must not change), and under
    ``training_data`` the fingerprint of the rows and labels it trains on (:func:`data_fingerprint`,
    :func:`online_fingerprint`)."""
    return {**{k: v for k, v in cfg.flat().items() if k not in IGNORED_ON_RESUME}, TRAINING_DATA: data}


def online_fingerprint(rows: TrainingRows, source: AnnotateConfig) -> dict:
    """--teacher-mode online: the rows it reads and the settings of the teacher that labels them (its
    weights are not hashed: a model folder retrained in place goes unnoticed)."""
    columns = ["id", "text", "gold", "split"]
    settings = source.flat()  # the backend's own settings (dtype, load_in_4bit, ...) included
    teacher = {k: settings.get(k) for k in ONLINE_TEACHER_SETTINGS}
    return {
        "source": "online",
        "rows": [rows_fingerprint(rows.train, columns), rows_fingerprint(rows.val, columns)],
        "teacher": {**teacher, "prompt_hash": load_task(source.task, rows.labels).prompt_hash()},
    }


def data_change(then: dict, now: dict) -> tuple[str, str] | None:
    """What differs between two fingerprints of the training data, as ``(what, how)`` in words; None when nothing."""
    if then.get("source") != now.get("source"):
        return "the training data", f"{then.get('source')} then, {now.get('source')} now"
    if now["source"] == "online":
        if then["rows"] != now["rows"]:
            return "the input rows", "edited, added or removed"
        keys = sorted(
            k for k in then["teacher"].keys() | now["teacher"].keys() if then["teacher"].get(k) != now["teacher"].get(k)
        )
        if keys:
            return "the teacher settings", ", ".join(
                f"{k} {then['teacher'].get(k)!r} then, {now['teacher'].get(k)!r} now" for k in keys
            )
        return None
    if then["calibration"]["mode"] != now["calibration"]["mode"]:
        return "the annotations", f"calibration {then['calibration']['mode']} then, {now['calibration']['mode']} now"
    chunks = [
        f"{name} {'added' if name not in then['chunks'] else 'removed' if name not in now['chunks'] else 'changed'}"
        for name in sorted(then["chunks"].keys() | now["chunks"].keys())
        if then["chunks"].get(name) != now["chunks"].get(name)
    ]
    if chunks:
        return "the annotations", "chunk " + ", ".join(chunks[:3]) + (
            f" and {len(chunks) - 3} more" if len(chunks) > 3 else ""
        )
    if then["calibration"] != now["calibration"]:
        return "the annotations", f"calibration {now['calibration']['mode']} fitted again"
    if then["reviewed"] != now["reviewed"]:
        return "the reviewed labels", "'distillery review --import'; --hard-labels auto trains on them"
    return None


def check_same_settings(ckpt_dir: Path, settings: dict) -> None:
    """Refuse to resume a checkpoint with other training settings or other training data, naming what changed."""
    path = ckpt_dir / "settings.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    changed = sorted(k for k in set(saved) | set(settings) if k != TRAINING_DATA and saved.get(k) != settings.get(k))
    if changed:
        what = ", ".join(f"{k} {saved.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
        raise UserError(
            f"--resume: the checkpoint in {ckpt_dir} was trained with other settings ({what}); rerun with the "
            "checkpoint's settings, or without --resume to train anew"
        )
    if TRAINING_DATA not in saved:
        raise UserError(
            f"--resume: the checkpoint in {ckpt_dir} records no fingerprint of the rows and labels it trained on (an "
            "older distillery wrote it), so it cannot be checked against the annotations now; rerun without "
            "--resume to train anew"
        )
    change = data_change(saved[TRAINING_DATA], settings[TRAINING_DATA])
    if change:
        raise UserError(
            f"--resume: {change[0]} changed since the checkpoint in {ckpt_dir} was written ({change[1]}); a "
            "resumed student "
            "would have trained on two data sets: rerun without --resume to train anew"
        )


def find_checkpoint(out_dir: Path) -> Path | None:
    """The newest whole checkpoint: ``checkpoint``, or a ``.new``/``.old`` one a kill left mid-swap.

    A checkpoint is whole once its ``progress.json`` (written last) is there.
    """
    whole = [out_dir / name for name in CHECKPOINTS if (out_dir / name / "progress.json").is_file()]
    return max(whole, key=lambda d: json.loads((d / "progress.json").read_text())["step"], default=None)


def write_refused(err: BaseException) -> bool:
    """Whether ``err`` says the disk refused a write: an OSError (full, read-only, over quota, no
    permission), a full disk whichever library raised it (:func:`full_disk`), torch.save's
    "PytorchStreamWriter failed writing" RuntimeError or safetensors' I/O error."""
    if isinstance(err, OSError) or full_disk(err):
        return True
    text = str(err)
    return isinstance(err, (RuntimeError, SafetensorError)) and any(
        s in text for s in ("PytorchStreamWriter", "inline_container", "IoError")
    )


def _reason(err: BaseException) -> str:
    return (
        err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip() or type(err).__name__
    ).splitlines()[0][:200]


@contextlib.contextmanager
def checkpoint_writes(out_dir: Path, step: int) -> Iterator[None]:
    """Around :func:`save_checkpoint`: a write the disk refuses stops the run with one line (a
    :class:`UserError`) saying that the last whole checkpoint is kept and how to go on. The half-written
    ``checkpoint.new`` never counts as whole: its ``progress.json`` (written last) is not there."""
    try:
        yield
    except Exception as err:
        if not write_refused(err):
            raise
        fresh = out_dir / CHECKPOINTS[1]
        with contextlib.suppress(OSError):
            (fresh / "progress.json").unlink(missing_ok=True)  # one there would call the torn folder whole
        reason = _reason(err)
        previous = find_checkpoint(out_dir)
        kept = (
            f"the last whole checkpoint ({previous}, step "
            f"{json.loads((previous / 'progress.json').read_text())['step']}) is kept: free "
            "space, then rerun with --resume to go on from it"
            if previous
            else "there is no earlier checkpoint: free space, then rerun"
        )
        raise UserError(f"could not write the checkpoint of step {step} to {fresh} ({reason}); {kept}") from err


# What a checkpoint folder holds until it is sealed: accelerate's save_state, then ours. A file of another
# name in a checkpoint a kill left unsealed is a user's (tests/test_trust3.py checks a real save).
CHECKPOINT_FILES = (
    "model*.safetensors",
    "model*.bin",
    "pytorch_model*.bin",
    "optimizer*.bin",
    "scheduler*.bin",
    "sampler*.bin",
    "random_states_*.pkl",
    "scaler*.pt",
    "custom_checkpoint_*.pkl",
    "torch_rng.pt",
    "best.pt",
    "settings.json",
    "progress.json",
)


def save_checkpoint(
    accelerator: Accelerator, out_dir: Path, progress: dict, best_state: dict | None, settings: dict
) -> None:
    """Model, optimizer, scheduler and RNG states (accelerate) plus our progress, best weights and settings.

    Written to ``checkpoint.new`` and renamed into place once whole; the previous checkpoint
    stays until then, so a kill at any instant leaves one whole checkpoint to resume from.
    """
    current, fresh, old = (out_dir / name for name in CHECKPOINTS)
    if accelerator.is_main_process:
        remove_owned(fresh)
        if fresh.is_dir() and not any(fresh.iterdir()):  # empty and unmarked: an older version was killed making it
            fresh.rmdir()
        make_folder(fresh, expect=CHECKPOINT_FILES)  # what accelerate and torch write into it is Distillery's
    accelerator.wait_for_everyone()
    accelerator.save_state(str(fresh))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(torch.get_rng_state(), fresh / "torch_rng.pt")
        if best_state is not None:
            torch.save(best_state, fresh / "best.pt")
        write_json(fresh / "settings.json", settings)
        seal_folder(fresh)  # lists what is there: a file a user saves into it later is never deleted
        write_text(fresh / "progress.json", json.dumps(progress))  # last: the checkpoint is whole
        if current.exists():
            remove_owned(old)
            current.rename(old)
        fresh.rename(current)
        remove_owned(old)
    accelerator.wait_for_everyone()
