"""Training rows from the annotation chunks, and the dataloaders that batch them."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from distillery.core.annotations import label_columns, read_annotations
from distillery.core.errors import UserError
from distillery.core.reviewed import reviewed_fingerprint, reviewed_labels
from distillery.core.run import Run
from distillery.distill.config import DistillConfig

__all__ = [
    "EpochBatchSampler",
    "TrainingRows",
    "build_dataloaders",
    "covering_length",
    "data_fingerprint",
    "load_training_rows",
]


@dataclass
class TrainingRows:
    """Texts with hard label ids and teacher log-probs, split into train and validation."""

    labels: list[str]
    train: pd.DataFrame
    val: pd.DataFrame
    n_failed: int
    n_reviewed: int = 0  # training rows whose hard label is a human one (--hard-labels auto)
    fingerprint: dict | None = None  # what the rows and labels come from (data_fingerprint): --resume refuses another


def load_training_rows(cfg: DistillConfig) -> TrainingRows:
    """Read the annotations, drop failed rows (counted), keep split=train, hold out a val set."""
    frame, manifest = read_annotations(Run.of(cfg).annotations)
    labels = manifest["labels"]
    failed = frame["error_type"] != ""
    frame = frame[~failed & (frame["split"] == "train")].reset_index(drop=True)
    if cfg.max_train_rows:
        frame = frame.head(cfg.max_train_rows)
    if cfg.hard_labels == "gold":
        if (frame["gold"] == "").any():
            raise UserError(
                "--hard-labels gold: expected a gold label in every training row; found rows without one; "
                "use --hard-labels teacher"
            )
        hard = frame["gold"]
    else:
        hard = frame["teacher_label"]
    n_reviewed, reviewed = 0, None
    if (
        cfg.hard_labels == "auto" and cfg.teacher_mode == "offline"
    ):  # a person's answer beats the teacher's where there is one
        reviewed = reviewed_labels(cfg.out, frame["id"])
        human = pd.Series([reviewed.get(str(i), "") for i in frame["id"]], index=frame.index)
        hard = human.where(human.isin(labels), hard)
        n_reviewed = int(human.isin(labels).sum())
    frame = frame.assign(hard=hard.map({lab: i for i, lab in enumerate(labels)}))
    train, val = split_train_val(frame, cfg)
    return TrainingRows(labels, train, val, int(failed.sum()), n_reviewed, data_fingerprint(manifest, reviewed))


def data_fingerprint(manifest: dict, reviewed: dict[str, str] | None) -> dict:
    """What the training rows and their labels come from, for ``--resume`` to compare: every
    chunk's checksum, the calibration (its mode and a hash of the whole record) and, with
    ``--hard-labels auto``, the human labels of the training rows (``reviewed``; None otherwise)."""
    calibration = manifest.get("calibration", {})
    return {
        "source": "annotations",
        "chunks": {name: meta["sha256"] for name, meta in sorted(manifest["chunks"].items())},
        "calibration": {
            "mode": calibration.get("mode"),
            "sha256": hashlib.sha256(json.dumps(calibration, sort_keys=True).encode()).hexdigest()[:16],
        },
        "reviewed": None if reviewed is None else reviewed_fingerprint(reviewed),
    }


def split_train_val(frame: pd.DataFrame, cfg: DistillConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out ``cfg.val_fraction`` of the rows (seeded) to pick the best checkpoint."""
    if len(frame) < 2:
        raise UserError(f"expected at least 2 training rows; found {len(frame)}; use more rows (--limit)")
    order = np.random.default_rng(cfg.seed).permutation(len(frame))
    n_val = int(round(len(frame) * cfg.val_fraction))
    val, train = frame.iloc[order[:n_val]], frame.iloc[order[n_val:]]
    return train.reset_index(drop=True), val.reset_index(drop=True)


def covering_length(tokenizer, texts: list[str], model_limit: int | None, share: float = 0.95) -> int:
    """The smallest max length (a multiple of 8) that leaves ``share`` of ``texts`` untruncated, capped at
    ``model_limit``."""
    lengths = sorted(len(ids) for ids in tokenizer(texts, add_special_tokens=True).input_ids)
    if not lengths:
        return min(128, model_limit or 128)
    needed = lengths[max(0, int(np.ceil(share * len(lengths))) - 1)]  # at least `share` of the rows fit
    length = -(-needed // 8) * 8
    return max(8, min(length, model_limit or length))


def _encode(frame: pd.DataFrame, labels: list[str], tokenizer, max_length: int) -> list[dict]:
    enc = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)
    teacher = frame[label_columns(labels)].to_numpy(np.float32)
    return [
        {"input_ids": ids, "label": int(y), "teacher_logprobs": t, "text": text}
        for ids, y, t, text in zip(enc["input_ids"], frame["hard"], teacher, frame["text"])
    ]


def _epoch_batches(lengths: list[int], batch_size: int, seed: int, group: bool) -> list[list[int]]:
    """Shuffled batches; with ``group``, rows of similar length share a batch (sorted inside
    shuffled windows of 50 batches), so dynamic padding pads less. The one short batch always comes
    last: accelerate's split of each batch across processes keeps only full batches and the last one."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group:
        return [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    window = 50 * batch_size
    batches = []
    for w in range(0, len(order), window):
        part = sorted(order[w : w + window], key=lambda i: lengths[i], reverse=True)
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return sorted(batches, key=lambda batch: len(batch) < batch_size)  # stable: the short batch last


class EpochBatchSampler:
    """Batches fixed by (seed, epoch): call ``set_epoch`` before each epoch; a resumed run
    sees exactly the batches the first run saw."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: bool):
        self.lengths, self.batch_size, self.seed, self.group, self.epoch = lengths, batch_size, seed, group, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(_epoch_batches(self.lengths, self.batch_size, self.seed + self.epoch, self.group))

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


def build_dataloaders(cfg: DistillConfig, tokenizer, rows: TrainingRows) -> tuple[DataLoader, DataLoader | None]:
    """Tokenize once; batches are padded to their own longest row (dynamic padding).

    ``cfg.max_length`` must be set (distill resolves 0, automatic, before calling this).
    """
    if cfg.max_length < 1:
        raise UserError(
            "build_dataloaders: expected max_length >= 1; found 0 (automatic): resolve it first, as distill() does"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(items: list[dict]) -> dict:
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):  # right padding (the encoder student reads position 0)
            ids[i, : len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[i, : len(it["input_ids"])] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.tensor([it["label"] for it in items]),
            "teacher_logprobs": torch.tensor(np.stack([it["teacher_logprobs"] for it in items])),
            "texts": [it["text"] for it in items],  # for the online teacher
        }

    train = _encode(rows.train, rows.labels, tokenizer, cfg.max_length)
    sampler = EpochBatchSampler(
        [len(it["input_ids"]) for it in train], cfg.batch_size // cfg.grad_accum, cfg.seed, cfg.group_by_length
    )
    train_dl = DataLoader(train, batch_sampler=sampler, collate_fn=collate)
    val_dl = None
    if len(rows.val):
        val = _encode(rows.val, rows.labels, tokenizer, cfg.max_length)
        val_dl = DataLoader(val, batch_size=2 * cfg.batch_size, collate_fn=collate)
    return train_dl, val_dl
