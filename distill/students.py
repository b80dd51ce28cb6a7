"""Student models: an encoder classifier, or a Llama classifier with LoRA adapters (LLM-Neo).

Both load back through :func:`load_trained_student`, which the evaluation stage uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from annotate.models import gguf_to_plain, parameter_count, resolve_model
from distill.config import DistillConfig

__all__ = ["load_student", "save_student", "load_trained_student", "trainable_parameters"]

STUDENT_FILE = "distillery_student.json"


def _labels_kwargs(labels: list[str]) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {lab: i for i, lab in enumerate(labels)}}


def load_student(cfg: DistillConfig, labels: list[str]):
    """``(tokenizer, model)`` with a fresh classification head for ``labels``.

    ``encoder``: any ``AutoModelForSequenceClassification`` checkpoint (default the embedded
    MiniLM). ``llama-lora``: a Llama-architecture causal LM (dir, hub id or GGUF; default the
    embedded SmolLM2) as ``LlamaForSequenceClassification`` wrapped in LoRA adapters; only the
    adapters and the head train.
    """
    spec = cfg.student_model or ("smollm2" if cfg.student == "llama-lora" else "minilm")
    path = resolve_model(spec)
    if path.endswith(".gguf"):
        path = gguf_to_plain(path, AutoModelForCausalLM)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # Llama tokenizers often have none; the head skips pad tokens
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = _labels_kwargs(labels)
    if cfg.student == "encoder":
        model = AutoModelForSequenceClassification.from_pretrained(path, ignore_mismatched_sizes=True, **kwargs)
        return tokenizer, model

    from peft import LoraConfig, TaskType, get_peft_model

    if cfg.qlora:
        from annotate.models import bnb_4bit_config, pick_device

        device = pick_device(cfg.device)
        kwargs.update(quantization_config=bnb_4bit_config(device), device_map={"": device.index or 0})
    base = AutoModelForSequenceClassification.from_pretrained(path, pad_token_id=tokenizer.pad_token_id, **kwargs)
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets), modules_to_save=["score"],
    )
    model = get_peft_model(base, lora)
    model.base_path = path  # recorded next to the adapter so the student reloads offline
    return tokenizer, model


def trainable_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (4-bit weights counted in full)."""
    return parameter_count(model)


def save_student(model, tokenizer, out_dir: Path, cfg: DistillConfig, labels: list[str]) -> None:
    """Save the student (full model, or LoRA adapter + head) with its tokenizer and labels.

    ``--merge`` also writes ``OUT/student/merged``: a standalone model with the adapters folded in.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = {"student": cfg.student, "labels": labels, "base": getattr(model, "base_path", None)}
    (out_dir / STUDENT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if cfg.student == "llama-lora" and cfg.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out_dir / "merged")
        tokenizer.save_pretrained(out_dir / "merged")


def load_trained_student(path: str | Path, device="cpu"):
    """``(tokenizer, model)`` of a saved student: a full model dir or a LoRA adapter dir."""
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not (path / "adapter_config.json").is_file():
        return tokenizer, AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
    from peft import PeftModel

    meta = json.loads((path / STUDENT_FILE).read_text())
    base = AutoModelForSequenceClassification.from_pretrained(meta["base"], pad_token_id=tokenizer.pad_token_id, **_labels_kwargs(meta["labels"]))
    model = PeftModel.from_pretrained(base, path)
    return tokenizer, model.to(device).eval()
