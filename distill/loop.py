"""distill's training loop: the epochs from where a run stands, one optimizer step per ``grad_accum``
micro-batches, validation passes (:mod:`distillery.distill.selection` keeps one), checkpoints."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from sklearn.metrics import f1_score
from tqdm.auto import tqdm

from distillery.distill.checkpoint import checkpoint_writes, save_checkpoint
from distillery.distill.config import DistillConfig
from distillery.distill.data import TrainingRows
from distillery.distill.losses import hybrid_kd_loss, hybrid_kd_rows
from distillery.distill.online import Targets
from distillery.distill.selection import select
from distillery.student.kinds import student_kind

__all__ = ["Training", "evaluate_student", "train", "validate", "warm_start_head"]


@dataclass
class Training:
    """One training run between its steps: what :func:`prepare` built and the loop moves on."""

    cfg: DistillConfig
    out_dir: Path
    accelerator: Accelerator
    device: torch.device
    rows: TrainingRows
    targets: Targets  # each batch's labels: from the chunks, or from the teacher online
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


@torch.no_grad()
def evaluate_student(
    model,
    dataloader,
    cfg: DistillConfig,
    targets: Targets | None = None,
    weights: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
) -> dict:
    """Validation loss parts (weighted by class like the training loss, on the logits adjusted like its),
    each row's loss, and agreement and macro-F1 of the student's own logits against the hard labels."""
    model.eval()
    sums = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
    predicted, hard, rows = [], [], []
    for batch in dataloader:
        batch = targets(batch) if targets is not None else batch
        batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_args = (batch["teacher_logprobs"], batch["labels"], cfg.alpha, cfg.temperature, weights, cfg.hard_loss)
        adjusted = logits if offsets is None else logits + offsets.to(logits.device)
        for key, value in zip(("loss", "kd", "ce"), hybrid_kd_loss(adjusted, *loss_args)):
            sums[key] += value.item() * len(batch["labels"])
        rows.append(hybrid_kd_rows(adjusted, *loss_args).cpu())
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
    batch = run.targets(batch)
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


def validate(run: Training, record: dict) -> None:
    """Score the validation rows into ``record``; keep the weights :func:`keep` picks."""
    scores = evaluate_student(run.model, run.val_dl, run.cfg, run.targets, run.class_weights, run.logit_offsets)
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


def warm_start_head(model, train_dl, cfg: DistillConfig, targets: Targets, device: torch.device) -> None:
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
            batch = targets(batch)
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
