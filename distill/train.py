"""The distill stage: load chunks -> build dataloaders -> train loop -> save the best student.

Run it with::

    distillery distill --out data/runs/demo            # reads data/runs/demo/annotations
    distillery distill --student-model roberta-base --alpha 0.5 --temperature 2 --out DIR
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from annotate.models import pick_device
from distill.config import DistillConfig
from distill.data import build_dataloaders, load_training_rows
from distill.losses import hybrid_kd_loss
from distill.students import load_student, save_student, trainable_parameters

__all__ = ["distill", "evaluate_student"]


@torch.no_grad()
def evaluate_student(model, dataloader, cfg: DistillConfig) -> dict:
    """Validation loss parts and agreement with the hard labels."""
    model.eval()
    sums = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
    agree = total = 0
    for batch in dataloader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        parts = hybrid_kd_loss(logits, batch["teacher_logprobs"], batch["labels"], cfg.alpha, cfg.temperature)
        n = len(batch["labels"])
        for key, value in zip(("loss", "kd", "ce"), parts):
            sums[key] += value.item() * n
        agree += (logits.argmax(-1) == batch["labels"]).sum().item()
        total += n
    model.train()
    return {**{k: v / total for k, v in sums.items()}, "val_accuracy": agree / total}


def distill(cfg: DistillConfig) -> Path:
    """Train the student on the annotations of ``cfg.out``; returns the saved student dir."""
    set_seed(cfg.seed)
    out_dir = Path(cfg.output_dir or f"{cfg.out}/student")
    rows = load_training_rows(cfg)
    print(f"distill: {len(rows.train)} train rows, {len(rows.val)} validation rows, {rows.n_failed} failed annotations left out")
    tokenizer, model = load_student(cfg, rows.labels)
    trainable, total = trainable_parameters(model)
    print(f"distill: {cfg.student} student, {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%)")
    train_dl, val_dl = build_dataloaders(cfg, tokenizer, rows)

    device = pick_device(cfg.device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * len(train_dl)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
    model, optimizer, train_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, scheduler)
    eval_at = {max(1, round(len(train_dl) * (i + 1) / cfg.evals_per_epoch)) for i in range(cfg.evals_per_epoch)}

    log, best, best_state = [], -1.0, None
    started = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc="distill", unit="step", mininterval=0.5 if sys.stderr.isatty() else 30)
    for epoch in range(cfg.epochs):
        for step, batch in enumerate(train_dl, start=1):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = hybrid_kd_loss(logits, batch["teacher_logprobs"], batch["labels"], cfg.alpha, cfg.temperature)
            accelerator.backward(loss.total)
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            record = {"epoch": epoch, "step": bar.n + 1, "loss": loss.total.item(), "kd": loss.kd.item(), "ce": loss.ce.item(), "lr": scheduler.get_last_lr()[0]}
            bar.update(1)
            bar.set_postfix(kd=f"{record['kd']:.3f}", ce=f"{record['ce']:.3f}")
            if val_dl is not None and step in eval_at:
                record.update({f"val_{k}" if k != "val_accuracy" else k: v for k, v in evaluate_student(model, val_dl, cfg).items()})
                if record["val_accuracy"] > best:  # keep the best checkpoint's trainable weights in memory
                    best = record["val_accuracy"]
                    best_state = {k: v.detach().cpu().clone() for k, v in accelerator.unwrap_model(model).named_parameters() if v.requires_grad}
                tqdm.write(f"  step {record['step']}: val loss {record['val_loss']:.4f}, val accuracy {record['val_accuracy']:.4f}")
            log.append(record)
    bar.close()
    train_seconds = time.perf_counter() - started

    student = accelerator.unwrap_model(model)
    if best_state is not None:
        student.load_state_dict(best_state, strict=False)
    save_student(student, tokenizer, out_dir, cfg, rows.labels)
    (out_dir / "distillery_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    with open(out_dir / "train_log.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in log)
    summary = {
        "train_rows": len(rows.train), "val_rows": len(rows.val), "failed_rows_left_out": rows.n_failed,
        "steps": steps, "train_seconds": train_seconds, "train_rows_per_s": cfg.epochs * len(rows.train) / train_seconds,
        "best_val_accuracy": best if best >= 0 else None, "labels": rows.labels,
        "trainable_parameters": trainable, "total_parameters": total,
    }
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"distill: saved student to {out_dir} ({train_seconds:.0f} s, best val accuracy {summary['best_val_accuracy']})")
    return out_dir
