"""The LoRA Llama student (LLM-Neo) on a tiny random Llama: what trains, save/load, merge."""

import pytest
import torch
from conftest import DEVICES

from distillery.distill import DistillConfig, hybrid_kd_loss, load_student, load_trained_student
from distillery.student import save_student, trainable_parameters

LABELS = ["negative", "positive"]


def _student(tiny_llama, device="cpu", **settings):
    cfg = DistillConfig(student_kind="llama-lora", student_model=str(tiny_llama), device=device, settings=settings)
    torch.manual_seed(0)
    return cfg, *load_student(cfg, LABELS)


def _batch(tokenizer, texts=("I love this movie", "terrible and awful acting", "great"), device="cpu"):
    enc = tokenizer(list(texts), padding=True, return_tensors="pt").to(device)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("device", DEVICES)
def test_only_adapters_and_head_change_after_a_step(tiny_llama, device):
    cfg, tok, model = _student(tiny_llama, device)
    model.to(device)
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < total
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or "score" in n for n in names)
    assert any("q_proj.lora_A" in n for n in names) and any("v_proj.lora_B" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, mask = _batch(tok, device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    logits = model(input_ids=ids, attention_mask=mask).logits
    hybrid_kd_loss(
        logits, torch.log_softmax(torch.randn(3, 2, device=device), -1), torch.tensor([1, 0, 1], device=device)
    ).total.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in names:
            continue
        assert torch.equal(p, before[n]), f"frozen parameter {n} changed"
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in names and "lora_B" in n)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_falls_on_a_learnable_toy_task(tiny_llama, device):
    cfg, tok, model = _student(tiny_llama, device, lora_r=8)
    model.to(device)
    ids, mask = _batch(tok, ["I love it", "I hate it", "great fun", "awful acting"], device)
    labels = torch.tensor([1, 0, 1, 0], device=device)
    teacher = torch.log(torch.tensor([[0.1, 0.9], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]], device=device))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(30):
        loss = hybrid_kd_loss(model(input_ids=ids, attention_mask=mask).logits, teacher, labels).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_adapter_save_load_and_merge_give_the_same_logits(tiny_llama, tmp_path):
    cfg, tok, model = _student(tiny_llama, merge=True)
    with torch.no_grad():  # move the adapters and head away from their initial values
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    ids, mask = _batch(tok)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    save_student(model, tok, tmp_path / "student", cfg, LABELS)
    assert (tmp_path / "student" / "adapter_config.json").is_file()
    _, loaded = load_trained_student(tmp_path / "student")
    merged_tok, merged = load_trained_student(tmp_path / "student" / "merged")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, want)
        assert torch.allclose(merged(input_ids=ids, attention_mask=mask).logits, want, atol=1e-5)
    assert merged.config.id2label == {0: "negative", 1: "positive"}


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    """The tiny Llama saved in bfloat16, as Llama-3.2-1B ships."""
    from tiny import build_llama
    from transformers import AutoModelForCausalLM

    path = build_llama(tmp_path_factory.mktemp("bf16_llama"))
    AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(path)
    return path


@pytest.mark.parametrize("device", DEVICES)
def test_every_trainable_parameter_is_float32_on_a_bf16_checkpoint(bf16_llama, device):
    cfg, tok, model = _student(bf16_llama, device)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in n for n in trainable), "the head copy is trainable"
    assert all(p.dtype == torch.float32 for p in trainable.values()), {
        n: p.dtype for n, p in trainable.items() if p.dtype != torch.float32
    }
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == ({torch.float32} if device == "cpu" else {torch.bfloat16})  # the CPU runs bf16 ~50x slower
    # A small update survives: bf16 rounds x + 1e-4 back to x for |x| >~ 0.05.
    head = next(p for n, p in trainable.items() if "modules_to_save" in n)
    before = head.detach().clone()
    with torch.no_grad():
        head.add_(1e-4)
    assert (head != before).float().mean().item() == 1.0


def test_keep_trainable_fp32_casts_only_what_trains(bf16_llama):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from distillery.student import keep_trainable_fp32

    base = AutoModelForSequenceClassification.from_pretrained(bf16_llama, num_labels=2, dtype=torch.bfloat16)
    model = get_peft_model(
        base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["q_proj"], modules_to_save=["score"])
    )
    assert any(p.requires_grad and p.dtype == torch.bfloat16 for p in model.parameters()), (
        "peft leaves the head copy in bf16"
    )
    keep_trainable_fp32(model)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)


def test_a_qlora_adapter_on_the_cpu_says_which_base_it_runs_on(tiny_llama, tmp_path):
    from dataclasses import replace

    cfg, tok, model = _student(tiny_llama)
    save_student(model, tok, tmp_path / "lora", cfg, LABELS)
    save_student(
        model, tok, tmp_path / "qlora", replace(cfg, settings=replace(cfg.settings, qlora=True)), LABELS
    )  # as a GPU run would record it
    assert load_trained_student(tmp_path / "lora")[1].evaluated_base == "float32 base"
    # No bitsandbytes on the CPU: the unquantized base, and the report says that is not what was trained.
    assert "trained on a 4-bit base" in load_trained_student(tmp_path / "qlora")[1].evaluated_base
