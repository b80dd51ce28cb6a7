"""Student kinds: how a student is built for training, saved and loaded back. Each kind is a
:class:`StudentKind` in the ``student_kinds`` registry (``distillery.core.registry``); the built-in
ones are ``encoder`` (any AutoModelForSequenceClassification) and ``llama-lora`` (LLM-Neo: a Llama
classifier with LoRA adapters). A new kind is a subclass registered under a name (docs/extending.md).

Every saved student loads back through :func:`load_trained_student`, which
``distillery.student.runtime`` (and through it evaluate, review, predict and export) uses.

torch and transformers are imported inside the functions that build or load a model, so registering
the kinds (the command line's parser and ``--help``) imports neither.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from distillery.core.errors import UserError
from distillery.core.models import bnb_4bit_config, gguf_to_plain, parameter_count, pick_device, resolve_model
from distillery.core.options import check_settings, option
from distillery.core.registry import student_kinds
from distillery.core.studentmeta import STUDENT_FILE, StudentMeta

if TYPE_CHECKING:
    import torch

__all__ = [
    "StudentKind",
    "StudentSettings",
    "student_kind",
    "EncoderStudent",
    "LoraStudent",
    "load_student",
    "save_student",
    "load_trained_student",
    "trainable_parameters",
    "keep_trainable_fp32",
    "STUDENT_FILE",
]


class StudentSettings(Protocol):
    """The settings a student kind reads when it builds or saves a student (distill's
    ``DistillConfig`` has them; ``settings`` holds the kind's own, a dataclass it declares)."""

    student_kind: str
    student_model: str
    device: str
    settings: Any


@dataclass
class LoraSettings:
    """The settings of the ``llama-lora`` kind, registered with it (LLM-Neo's r=4, alpha=8 on q/k/v)."""

    lora_r: int = option(4, "LoRA rank (llama-lora; LLM-Neo: 4)", ge=1, short="LoRA rank")
    lora_alpha: float = option(8.0, "LoRA alpha (LLM-Neo: 8)", gt=0.0, short="LoRA alpha")
    lora_dropout: float = option(0.1, "LoRA dropout (LLM-Neo: 0.1)", ge=0.0, lt=1.0, short="LoRA dropout")
    lora_targets: list[str] = option(
        ["q_proj", "k_proj", "v_proj"],
        "modules that get LoRA adapters, comma-separated",
        nonempty=True,
        short="modules with LoRA adapters",
    )
    qlora: bool = option(
        False,
        "QLoRA: load the llama student in 4 bit with bitsandbytes (CUDA only)",
        short="QLoRA: 4-bit base (CUDA)",
    )
    merge: bool = option(
        False,
        "llama-lora: also save a merged standalone model in STUDENT/merged",
        short="also save STUDENT/merged",
    )

    def __post_init__(self) -> None:
        if isinstance(self.lora_targets, str):
            self.lora_targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        check_settings(self)


def _labels_kwargs(labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {lab: i for i, lab in enumerate(labels)},
    }


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # Llama tokenizers often have none; the head skips pad tokens
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class StudentKind:
    """One kind of student. Subclass it, override what differs, and register an instance::

        @distillery.student_kinds.register("my-kind")
        class MyKind(distillery.StudentKind): ...     # (the decorator registers the class; an instance is made on use)

    The training loop needs from the model only ``model(input_ids=, attention_mask=).logits`` and
    ``model.device``; :meth:`save` and :meth:`load` must round-trip it.
    """

    summary = "a sequence classifier"
    default_model = "minilm"  # --student-model when empty: 'minilm' and 'smollm2' are the embedded models
    default_lr = 5e-5  # --lr 0 means this (measured: docs/results.md, "Small data")
    card_text = "fine-tuned encoder classifier"  # the model card's "what it is"
    library = "transformers"  # the model card's library_name
    exportable = True  # export reads the saved folder as a full model
    warm_start = True  # active --warm-start may start a round from the previous round's student
    adapters = False  # trains LoRA adapters
    settings = None  # the dataclass of the kind's own settings (flags and YAML keys of their own; None: none)
    head_names = (
        "classifier",
        "score",
    )  # parameter names of the classification head (LP-FT's --head-warmup-epochs trains them alone)

    def build(self, cfg: StudentSettings, labels: list[str]):
        """``(tokenizer, model)`` with a fresh classification head for ``labels``, every weight float32."""
        import torch
        from transformers import AutoModelForSequenceClassification

        path = self.model_path(cfg)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, ignore_mismatched_sizes=True, dtype=torch.float32, **_labels_kwargs(labels)
        )
        return _tokenizer(path), model

    def model_path(self, cfg: StudentSettings) -> str:
        """The local folder of ``--student-model`` (a GGUF file is converted once)."""
        from transformers import AutoModelForCausalLM

        path = resolve_model(cfg.student_model or self.default_model)
        return gguf_to_plain(path, AutoModelForCausalLM) if path.endswith(".gguf") else path

    def save(self, model, tokenizer, folder: Path, cfg: StudentSettings, meta: StudentMeta) -> None:
        """Write the model and tokenizer files into ``folder`` (the caller writes ``meta`` last)."""
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    def load(self, folder: Path, meta: StudentMeta | None, device: torch.device):
        """``(tokenizer, model)`` of a saved student on ``device`` in eval mode; ``model.evaluated_base``
        says what the weights run as (the report and the model card show it)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        dtype = torch.float32 if device.type == "cpu" else "auto"
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype).to(device).eval()
        model.evaluated_base = "full model"
        return AutoTokenizer.from_pretrained(folder), model


@dataclass
class EncoderSettings:
    """The settings of the ``encoder`` kind: how its classification head reads the encoder."""

    readout: str = option(
        "head",
        "how the classifier reads the encoder: 'head' uses the checkpoint's own AutoModelForSequenceClassification "
        "head ([CLS] through BERT's pooler for MiniLM); 'auto' pools the token states as a sentence-transformers "
        "checkpoint says it was trained (its 1_Pooling config: mean for all-MiniLM-L6-v2), then one linear layer, "
        "and gives any other checkpoint its own head; 'mean' mean-pools any encoder. Default head: fine-tuned, "
        'the pooled head lost on the tuning half (docs/results.md, "Keep every class")',
        choices=("head", "auto", "mean"),
        short="classifier readout: head, auto or mean",
    )

    def __post_init__(self) -> None:
        check_settings(self)


def readout_pooling(path: str, readout: str) -> str | None:
    """The pooling of the head ``--readout`` gives the checkpoint at ``path`` (None: its own head). A student
    distill saved with a pooled head (``--student-model`` a previous student, as active --warm-start passes)
    keeps it: its weights fit no other head."""
    from transformers import AutoConfig

    from distillery.student.pooled import checkpoint_pooling

    saved = getattr(AutoConfig.from_pretrained(path), "distillery_pooling", None)
    if readout == "mean":
        return "mean"
    return saved or (checkpoint_pooling(path) if readout == "auto" else None)


@student_kinds.register("encoder")
class EncoderStudent(StudentKind):
    """Any encoder checkpoint (default: the embedded MiniLM-L6), every weight trained, read through its own
    AutoModelForSequenceClassification head; ``--readout auto`` reads a sentence-transformers checkpoint
    through its pooling instead (``mean``: any encoder, mean-pooled)."""

    summary = "an encoder classifier (MiniLM, RoBERTa, ...), every weight trained"
    settings = EncoderSettings

    def build(self, cfg: StudentSettings, labels: list[str]):
        import torch
        from transformers import AutoConfig

        from distillery.student.pooled import CLASS_NAME, CODE_FILE, PooledEncoderForSequenceClassification

        path = self.model_path(cfg)
        pooling = readout_pooling(path, getattr(cfg.settings, "readout", "head"))
        if pooling is None:
            return super().build(cfg, labels)
        config = AutoConfig.from_pretrained(path, **_labels_kwargs(labels))
        saved = getattr(config, "distillery_pooling", None)
        config.distillery_pooling = pooling
        config.auto_map = {"AutoModelForSequenceClassification": f"{CODE_FILE.removesuffix('.py')}.{CLASS_NAME}"}
        if saved:  # a pooled student, head and all
            model = PooledEncoderForSequenceClassification.from_pretrained(path, config=config, dtype=torch.float32)
        else:
            model = PooledEncoderForSequenceClassification.from_encoder(path, config, dtype=torch.float32)
        return _tokenizer(path), model

    def save(self, model, tokenizer, folder: Path, cfg: StudentSettings, meta: StudentMeta) -> None:
        """The model and tokenizer; a pooled head also gets its code (plain transformers loads it with
        ``trust_remote_code=True``)."""
        from distillery.student import pooled

        super().save(model, tokenizer, folder, cfg, meta)
        if isinstance(model, pooled.PooledEncoderForSequenceClassification):
            shutil.copyfile(pooled.__file__, folder / pooled.CODE_FILE)

    def load(self, folder: Path, meta: StudentMeta | None, device: torch.device):
        """A pooled head is built from this package's code, never from the code file in the folder."""
        import torch
        from transformers import AutoConfig, AutoTokenizer

        from distillery.student.pooled import PooledEncoderForSequenceClassification

        if not getattr(AutoConfig.from_pretrained(folder), "distillery_pooling", None):
            return super().load(folder, meta, device)
        dtype = torch.float32 if device.type == "cpu" else "auto"
        model = PooledEncoderForSequenceClassification.from_pretrained(folder, dtype=dtype).to(device).eval()
        model.evaluated_base = "full model"
        return AutoTokenizer.from_pretrained(folder), model


@student_kinds.register("llama-lora")
class LoraStudent(StudentKind):
    """LLM-Neo: a Llama-architecture causal LM (dir, hub id or GGUF; default the embedded SmolLM2) as
    ``LlamaForSequenceClassification`` wrapped in LoRA adapters; only the adapters and the head train."""

    summary = "a Llama classifier with LoRA adapters (LLM-Neo)"
    default_model = "smollm2"
    default_lr = 1e-3
    card_text = "LoRA adapter on a Llama classifier"
    library = "peft"
    exportable = False
    warm_start = False
    adapters = True
    settings = LoraSettings
    head_names = ("score",)  # LlamaForSequenceClassification's head, trained in full beside the adapters

    def build(self, cfg: StudentSettings, labels: list[str]):
        import torch
        from peft import LoraConfig, TaskType, get_peft_model
        from transformers import AutoModelForSequenceClassification

        path = self.model_path(cfg)
        tokenizer, device, kwargs = _tokenizer(path), pick_device(cfg.device), _labels_kwargs(labels)
        # The frozen base keeps its checkpoint's dtype on a GPU (bf16 for Llama-3.2-1B); on the CPU
        # float32 (bf16 runs ~50x slower there). The trainable parameters are float32 either way.
        kwargs["dtype"] = torch.float32 if device.type == "cpu" else "auto"
        if cfg.settings.qlora:
            kwargs.update(quantization_config=bnb_4bit_config(device), device_map={"": device.index or 0})
        base = AutoModelForSequenceClassification.from_pretrained(path, pad_token_id=tokenizer.pad_token_id, **kwargs)
        if cfg.settings.qlora:
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base)
        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=cfg.settings.lora_r,
            lora_alpha=cfg.settings.lora_alpha,
            lora_dropout=cfg.settings.lora_dropout,
            target_modules=list(cfg.settings.lora_targets),
            modules_to_save=list(self.head_names),
        )
        model = keep_trainable_fp32(get_peft_model(base, lora))
        model.base_path = path  # recorded next to the adapter so the student reloads offline
        return tokenizer, model

    def save(self, model, tokenizer, folder: Path, cfg: StudentSettings, meta: StudentMeta) -> None:
        """The adapter and head; ``--merge`` also writes ``folder/merged``, a standalone model with the adapters folded
        in."""
        super().save(model, tokenizer, folder, cfg, meta)
        if cfg.settings.merge:
            merged = model.merge_and_unload()
            merged.save_pretrained(folder / "merged")
            tokenizer.save_pretrained(folder / "merged")
            dataclasses.replace(meta, student="merged").write(folder / "merged")

    def load(self, folder: Path, meta: StudentMeta | None, device: torch.device):
        """The adapter on its base. A QLoRA adapter gets the 4-bit base it was trained on when a GPU
        and bitsandbytes are there; elsewhere the unquantized base, which is not quite the model
        that was trained (the report says so)."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        kwargs = {
            "dtype": torch.float32 if device.type == "cpu" else "auto",
            "pad_token_id": tokenizer.pad_token_id,
            **_labels_kwargs(meta.labels),
        }
        four_bit = meta.qlora and device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
        if four_bit:
            kwargs.update(quantization_config=bnb_4bit_config(device), device_map={"": device.index or 0})
        base = AutoModelForSequenceClassification.from_pretrained(meta.base, **kwargs)
        model = PeftModel.from_pretrained(base, folder)
        if not four_bit:
            model.to(device)
        base_dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
        model.evaluated_base = (
            "4-bit NF4 base, as trained"
            if four_bit
            else f"unquantized {base_dtype} base; the adapter was trained on a 4-bit base (QLoRA)"
            if meta.qlora
            else f"{base_dtype} base"
        )
        return tokenizer, model.eval()


def student_kind(name: str) -> StudentKind:
    """The registered kind named ``name``, as an instance (a registered class is instantiated)."""
    entry = student_kinds.get(name)
    return entry() if isinstance(entry, type) else entry


def load_student(cfg: StudentSettings, labels: list[str]):
    """``(tokenizer, model)`` with a fresh classification head for ``labels``, built by ``--student-kind``."""
    return student_kind(cfg.student_kind).build(cfg, labels)


def keep_trainable_fp32(model):
    """Cast every trainable parameter to float32 in place; frozen ones keep their dtype.

    peft casts the LoRA adapters to float32 but not the ``modules_to_save`` copy of the head,
    which stayed bf16 on a bf16 base: at lr 5e-5 most AdamW updates fell below bf16's
    resolution and were lost. Under bf16 autocast the matmuls still run in bf16.
    """
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def trainable_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (4-bit weights counted in full)."""
    return parameter_count(model)


def save_student(
    model,
    tokenizer,
    out_dir: Path,
    cfg: StudentSettings,
    labels: list[str],
    temperature: float = 1.0,
    class_bias: list[float] | None = None,
) -> None:
    """Save the student with its tokenizer, then its ``distillery_student.json`` (written last: a
    folder without it is a student whose training did not finish). ``temperature`` and
    ``class_bias``: its fitted post-hoc scaling (distill/scaling.py), applied wherever it is loaded."""
    out_dir.mkdir(parents=True, exist_ok=True)
    origin = student_kinds.origin(cfg.student_kind)
    meta = StudentMeta(
        student=cfg.student_kind,
        labels=labels,
        base=getattr(model, "base_path", None),
        qlora=getattr(cfg.settings, "qlora", False),
        plugin=origin if origin not in ("", "distillery") else None,  # a kind a plugin package registered
        temperature=temperature,
        class_bias=class_bias,
    )
    student_kind(cfg.student_kind).save(model, tokenizer, out_dir, cfg, meta)
    meta.write(out_dir)


def load_trained_student(path: str | Path, device="cpu"):
    """``(tokenizer, model)`` of a saved student, loaded by the kind its ``distillery_student.json``
    names (a merged LoRA student, or a folder without the file, loads as a full model)."""
    import torch

    path, device = Path(path), torch.device(device)
    meta = StudentMeta.read(path)
    kind = "encoder" if meta is None or meta.student == "merged" else meta.student  # merged: a full model
    if kind not in student_kinds:
        plugin = f"the package {meta.plugin}" if meta.plugin else "the package that provides it (a distillery plugin)"
        raise UserError(
            f"{path}: a student of kind '{kind}', which no installed plugin registers "
            f"(registered: {', '.join(student_kinds.names())}); install {plugin}, then rerun"
        )
    return student_kind(kind).load(path, meta, device)
