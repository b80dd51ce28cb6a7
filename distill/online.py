"""Where a training batch's labels come from (:class:`Targets`): the annotation chunks, or, for online
distillation (LLM-Neo style), a frozen teacher that gives soft labels per batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from distillery.annotate.calibration import fit_calibration, resolve_mode
from distillery.annotate.config import AnnotateConfig
from distillery.annotate.teacher import content_free_bias, online_backend
from distillery.core.annotations import label_columns
from distillery.core.errors import UserError
from distillery.core.inputs import load_rows
from distillery.core.registry import calibration_modes
from distillery.core.tasks import load_task
from distillery.distill.config import DistillConfig
from distillery.distill.data import TrainingRows, split_train_val

__all__ = ["OnlineTeacher", "Targets", "load_online_rows"]


class OnlineTeacher:
    """The teacher of a backend that can serve online distillation (``online=True``: local), scoring each
    training batch.

    Calibration follows ``--calibrate`` (``gold`` is not available online; ``auto`` means
    its no-gold choice): ``mean`` and the prior EM use the raw log-probs of the first
    ``calibration_texts`` (scored once before training), ``content-free`` the content-free
    inputs. With the same teacher outputs the targets equal the offline ones read from
    annotation chunks.

    Args:
        source: the annotate config (teacher, device, calibration).
        labels: the label set, in column order.
        calibration_texts: texts for ``mean`` calibration and the prior estimate.
    """

    def __init__(self, source: AnnotateConfig, labels: list[str], calibration_texts: list[str]):
        task = load_task(source.task, labels)
        backend = online_backend(source.backend)  # the registered backend, as annotate builds it
        self.teacher = backend.build(source.settings, task, source.runtime())
        mode = resolve_mode(source.calibrate, 0, len(labels))
        entry = calibration_modes.get(mode)
        if entry.needs_gold:
            raise UserError(
                f"--teacher-mode online: expected a calibration without gold rows; found {mode} (annotate "
                "offline for it)"
            )
        raw = np.zeros((0, len(labels)))
        if entry.fits_on_rows:
            raw = np.asarray([a.logprobs for a in self.teacher.score(calibration_texts) if a.logprobs is not None])
        content_free = content_free_bias(self.teacher, task.content_free) if entry.needs_content_free else None
        self.calibration = fit_calibration(mode, raw, content_free)

    def targets(self, texts: list[str], hard: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(teacher_logprobs, hard_labels)`` for a batch; ``hard`` given means gold labels.

        A row the teacher fails on gets NaN log-probs and label -100: the loss leaves it out.
        """
        anns = self.teacher.score(texts)
        n_labels = len(self.calibration.bias)  # one bias per label in every mode
        raw = np.array([a.logprobs if a.logprobs is not None else [np.nan] * n_labels for a in anns], dtype=np.float64)
        logprobs = torch.tensor(self.calibration.apply(raw), dtype=torch.float32)
        ok = torch.isfinite(logprobs).all(dim=-1)
        labels = hard.cpu() if hard is not None else logprobs.nan_to_num(-1e9).argmax(dim=-1)
        return logprobs, torch.where(ok, labels, torch.full_like(labels, -100))


@dataclass(frozen=True)
class Targets:
    """A batch's soft and hard labels, offline or online: every loop (training, validation, the head's
    warm start) asks this one object.

    Args:
        online: the teacher that scores each batch (``--teacher-mode online``); None: the labels came
            with the batch, read from the annotation chunks.
        gold_labels: online, the rows' gold labels are the hard labels (``--hard-labels gold``).
    """

    online: OnlineTeacher | None = None
    gold_labels: bool = False

    def __call__(self, batch: dict) -> dict:
        """The batch with its ``teacher_logprobs`` and ``labels``."""
        if self.online is None:
            return batch
        device = batch["input_ids"].device
        logprobs, labels = self.online.targets(batch["texts"], batch["labels"] if self.gold_labels else None)
        return {**batch, "teacher_logprobs": logprobs.to(device), "labels": labels.to(device)}


def load_online_rows(cfg: DistillConfig, source: AnnotateConfig) -> TrainingRows:
    """The raw training rows (split=train) for online distillation: no annotations needed."""
    task = load_task(source.task, source.labels or None)
    rows = load_rows(source, task.labels)
    frame = rows[rows["split"] == "train"].reset_index(drop=True)
    if cfg.max_train_rows:
        frame = frame.head(cfg.max_train_rows)
    if cfg.hard_labels == "gold":
        if (frame["gold"] == "").any():
            raise UserError(
                "--hard-labels gold: expected a gold label in every training row; found rows without one; "
                "use --hard-labels teacher"
            )
        hard = frame["gold"].map({lab: i for i, lab in enumerate(task.labels)})
    else:
        hard = pd.Series(-100, index=frame.index)  # filled by the teacher batch by batch
    frame = frame.assign(hard=hard, teacher_label="", **{c: np.nan for c in label_columns(task.labels)})
    train, val = split_train_val(frame, cfg)
    return TrainingRows(task.labels, train, val, 0)
