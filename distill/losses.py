"""The hybrid distillation loss, as a pure tensor function, and the class weights and logit offsets
it can take from the training rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from distillery.distill.data import TrainingRows

__all__ = ["KDLoss", "class_weights", "hard_label_counts", "hybrid_kd_loss", "hybrid_kd_rows", "logit_offsets"]


class KDLoss(NamedTuple):
    """The total loss and its two parts (each already a mean over its rows)."""

    total: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor


def hybrid_kd_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
    class_weights: torch.Tensor | None = None,
    hard_loss: str = "ce",
) -> KDLoss:
    """``L = α·T²·KL(softmax(z_T/T) ‖ softmax(z_S/T)) + (1−α)·CE(y, softmax(z_S))``.

    Defaults α=0.5, T=2.0 are LLM-Neo's. α=0 is plain hard-label fine-tuning, α=1 pure KD.
    The T² factor keeps the KD gradient's size independent of T (Hinton et al. 2015).

    Args:
        student_logits: ``(batch, n_labels)`` raw student scores z_S.
        teacher_logprobs: ``(batch, n_labels)`` teacher label log-probs z_T (natural log): a target,
            so no gradient reaches it. Rows with any non-finite value (no soft label) are left out of
            the KD mean.
        labels: ``(batch,)`` hard label ids; ``-100`` rows are left out of the CE mean.
        alpha: weight of the KD part, in [0, 1].
        temperature: softening temperature T > 0 applied to both distributions in KD.
        class_weights: ``(n_labels,)`` weight of a row by its class (its hard label, else the
            teacher's top label) in both parts, each part a weighted mean; None = every row 1.
        hard_loss: the hard-label part: ``ce`` (cross-entropy); ``gce``, generalised cross-entropy
            ``(1 − p_y^q)/q`` with q = 0.7 (Zhang & Sabuncu 2018), which gives little gradient to a row
            the student finds unlikely (a likely noisy label); ``confident``, cross-entropy weighted by the
            teacher's confidence in the row's label, ``(K·p_T(y) − 1)/(K − 1)`` floored at 0, so a row the
            teacher was unsure of is learnt from the soft part alone (a label the teacher did not give, a
            person's, keeps weight 1).

    Returns:
        ``KDLoss(total, kd, ce)``; a part with no rows to average is 0 (never NaN).
    """
    kl_rows, ce_rows, soft_w, hard_w = _row_parts(
        student_logits, teacher_logprobs, labels, alpha, temperature, class_weights, hard_loss
    )
    kd = (
        (kl_rows * soft_w).sum() / soft_w.sum().clamp(min=1e-12) * temperature**2
    )  # no soft rows: 0 / 1e-12 = 0, no host sync
    ce = (ce_rows * hard_w).sum() / hard_w.sum().clamp(min=1e-12)
    return KDLoss(alpha * kd + (1 - alpha) * ce, kd, ce)


def hybrid_kd_rows(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
    class_weights: torch.Tensor | None = None,
    hard_loss: str = "ce",
) -> torch.Tensor:
    """``(batch,)``: each row's ``α·T²·KL + (1−α)·CE`` (a part the row has no label for counts 0), times
    its class weight. With every row labelled both ways and no weights, their mean is
    :func:`hybrid_kd_loss`'s total. What distill compares validation passes by, row by row."""
    kl_rows, ce_rows, soft_w, hard_w = _row_parts(
        student_logits, teacher_logprobs, labels, alpha, temperature, class_weights, hard_loss
    )
    return alpha * temperature**2 * kl_rows * soft_w + (1 - alpha) * ce_rows * hard_w


HARD_LOSSES = ("ce", "gce", "confident")
AUTO_SMALL_CLASS_ROWS = 100  # --class-weights auto weights the classes only while the smallest has fewer training rows
GCE_Q = 0.7  # Zhang & Sabuncu 2018's q: 0 is cross-entropy, 1 is the mean absolute error


def _row_parts(student_logits, teacher_logprobs, labels, alpha, temperature, class_weights, hard_loss="ce"):
    """Per row: the KL at T, the hard-label loss, and the weights of the soft and the hard part (0 where
    missing)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected 0 <= alpha <= 1, found {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0, found {temperature}")
    has_soft = torch.isfinite(teacher_logprobs).all(dim=-1)
    teacher = torch.where(has_soft.unsqueeze(-1), teacher_logprobs.detach(), torch.zeros_like(teacher_logprobs))
    t_logp = F.log_softmax(teacher.float() / temperature, dim=-1)
    s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl_rows = (t_logp.exp() * (t_logp - s_logp)).sum(dim=-1)
    has_hard = labels != -100
    weights = torch.ones_like(kl_rows)
    if class_weights is not None:
        row_class = torch.where(has_hard, labels, teacher.argmax(dim=-1))
        weights = class_weights.to(kl_rows.device, kl_rows.dtype)[row_class]
    if hard_loss not in HARD_LOSSES:
        raise ValueError(f"hard_loss: expected one of {HARD_LOSSES}, found {hard_loss!r}")
    ce_rows = F.cross_entropy(student_logits.float(), labels.clamp(min=0), reduction="none")
    hard_w = weights * has_hard
    if hard_loss == "gce":
        ce_rows = (1 - torch.exp(-ce_rows * GCE_Q)) / GCE_Q  # (1 - p_y^q) / q
    elif hard_loss == "confident":
        n_labels = teacher.shape[-1]
        p_label = F.softmax(teacher.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        confidence = ((n_labels * p_label - 1) / (n_labels - 1)).clamp(min=0)
        teachers_label = has_soft & (teacher.argmax(dim=-1) == labels)
        hard_w = hard_w * torch.where(teachers_label, confidence, torch.ones_like(confidence))
    return kl_rows, ce_rows, weights * has_soft, hard_w


def hard_label_counts(rows: TrainingRows) -> torch.Tensor | None:
    """Rows per class among the training rows' hard labels; None when they have none (online rows, whose
    labels come batch by batch)."""
    hard = rows.train["hard"] if "hard" in rows.train else None
    if hard is None or (hard < 0).all():
        return None
    return torch.bincount(torch.tensor(hard[hard >= 0].to_numpy()), minlength=len(rows.labels)).double()


def class_weights(mode: str, rows: TrainingRows, cap: float = 10.0) -> torch.Tensor | None:
    """--class-weights: ``n / (labels x rows of the class)`` per class from the training rows' hard labels
    (at most ``cap``); ``auto`` uses them when the smallest class has under AUTO_SMALL_CLASS_ROWS rows
    and the largest over 1.5x as many, else none (None also for online rows). Measured (docs/results.md,
    "Keep every class"): on 500 rows weights keep a class of ~25-50 rows that the unweighted student
    drops; on 2,000 SST-2 rows at 80/20 (~340 in the small class) they over-correct."""
    counts = None if mode == "none" else hard_label_counts(rows)
    if counts is None:
        return None
    if mode == "auto" and (counts.max() <= 1.5 * counts.min().clamp(min=1) or counts.min() >= AUTO_SMALL_CLASS_ROWS):
        return None
    weights = counts.sum() / (len(rows.labels) * counts.clamp(min=1))
    return weights.clamp(max=cap).float()


def logit_offsets(tau: float, rows: TrainingRows) -> torch.Tensor | None:
    """--logit-adjustment: ``TAU x log(share)`` per class, the shares of the training rows' hard labels
    (a class with none counts as one row); None when TAU is 0 or the rows are labelled online."""
    counts = None if tau == 0 else hard_label_counts(rows)
    if counts is None:
        return None
    offsets = tau * torch.log(counts.clamp(min=1) / counts.clamp(min=1).sum())
    return (offsets - offsets.mean()).float()
