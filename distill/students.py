"""Student models: an encoder classifier, or a Llama classifier with LoRA adapters (LLM-Neo).

Both load back through :func:`load_trained_student`, which the evaluation stage uses.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from distillery.core.models import bnb_4bit_config, gguf_to_plain, parameter_count, pick_device, resolve_model
from distillery.core.rundir import write_json
from distillery.distill.config import DistillConfig

__all__ = ["load_student", "save_student", "load_trained_student", "trainable_parameters", "keep_trainable_fp32"]

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
    device = pick_device(cfg.device)
    if cfg.student == "encoder":  # every weight trains: keep them all in float32 (compute may autocast)
        model = AutoModelForSequenceClassification.from_pretrained(path, ignore_mismatched_sizes=True, dtype=torch.float32, **kwargs)
        return tokenizer, model

    from peft import LoraConfig, TaskType, get_peft_model

    # The frozen base keeps its checkpoint's dtype on a GPU (bf16 for Llama-3.2-1B); on the CPU
    # float32 (bf16 runs ~50x slower there). The trainable parameters are float32 either way.
    kwargs["dtype"] = torch.float32 if device.type == "cpu" else "auto"
    if cfg.qlora:
        kwargs.update(quantization_config=bnb_4bit_config(device), device_map={"": device.index or 0})
    base = AutoModelForSequenceClassification.from_pretrained(path, pad_token_id=tokenizer.pad_token_id, **kwargs)
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets), modules_to_save=["score"],
    )
    model = keep_trainable_fp32(get_peft_model(base, lora))
    model.base_path = path  # recorded next to the adapter so the student reloads offline
    return tokenizer, model


def keep_trainable_fp32(model):
    """Cast every trainable parameter to float32 in place; frozen ones keep their dtype.

    peft casts the LoRA adapters to float32 but not the ``modules_to_save`` copy of the head,
    which stayed bf16 on a bf16 base: at lr 5e-5 most AdamW updates fell below bf16's
    resolution and were lost (issue #10). Under bf16 autocast the matmuls still run in bf16.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


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
    meta = {"student": cfg.student, "labels": labels, "base": getattr(model, "base_path", None), "qlora": cfg.qlora}
    write_json(out_dir / STUDENT_FILE, meta)
    if cfg.student == "llama-lora" and cfg.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out_dir / "merged")
        tokenizer.save_pretrained(out_dir / "merged")
        write_json(out_dir / "merged" / STUDENT_FILE, {**meta, "student": "merged"})


def load_trained_student(path: str | Path, device="cpu"):
    """``(tokenizer, model)`` of a saved student: a full model dir or a LoRA adapter dir.

    The model's ``evaluated_base`` says what the adapter runs on: a QLoRA adapter gets the 4-bit
    base it was trained on when a GPU and bitsandbytes are there; elsewhere the unquantized
    base, which is not quite the model that was trained (the report says so).
    """
    path, device = Path(path), torch.device(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = torch.float32 if device.type == "cpu" else "auto"
    if not (path / "adapter_config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
        model.evaluated_base = "full model"
        return tokenizer, model
    from peft import PeftModel

    meta = json.loads((path / STUDENT_FILE).read_text())
    kwargs = {"dtype": dtype, "pad_token_id": tokenizer.pad_token_id, **_labels_kwargs(meta["labels"])}
    four_bit = meta.get("qlora") and device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    if four_bit:
        kwargs.update(quantization_config=bnb_4bit_config(device), device_map={"": device.index or 0})
    base = AutoModelForSequenceClassification.from_pretrained(meta["base"], **kwargs)
    model = PeftModel.from_pretrained(base, path)
    if not four_bit:
        model.to(device)
    base_dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
    model.evaluated_base = ("4-bit NF4 base, as trained" if four_bit else
                            f"unquantized {base_dtype} base; the adapter was trained on a 4-bit base (QLoRA)" if meta.get("qlora") else f"{base_dtype} base")
    return tokenizer, model.eval()
