"""The LoRA Llama student (LLM-Neo) on a tiny random Llama: what trains, save/load, merge."""

import torch

from distill import DistillConfig, hybrid_kd_loss, load_student, load_trained_student
from distill.students import save_student, trainable_parameters

LABELS = ["negative", "positive"]


def _student(tiny_llama, **kw):
    cfg = DistillConfig(student="llama-lora", student_model=str(tiny_llama), device="cpu", **kw)
    torch.manual_seed(0)
    return cfg, *load_student(cfg, LABELS)


def _batch(tokenizer, texts=("I love this movie", "terrible and awful acting", "great")):
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_only_adapters_and_head_change_after_a_step(tiny_llama):
    cfg, tok, model = _student(tiny_llama)
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < total
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or "score" in n for n in names)
    assert any("q_proj.lora_A" in n for n in names) and any("v_proj.lora_B" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, mask = _batch(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    logits = model(input_ids=ids, attention_mask=mask).logits
    hybrid_kd_loss(logits, torch.log_softmax(torch.randn(3, 2), -1), torch.tensor([1, 0, 1])).total.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in names:
            continue
        assert torch.equal(p, before[n]), f"frozen parameter {n} changed"
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in names and "lora_B" in n)


def test_loss_falls_on_a_learnable_toy_task(tiny_llama):
    cfg, tok, model = _student(tiny_llama, lora_r=8)
    ids, mask = _batch(tok, ["I love it", "I hate it", "great fun", "awful acting"])
    labels = torch.tensor([1, 0, 1, 0])
    teacher = torch.log(torch.tensor([[0.1, 0.9], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]]))
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
        for n, p in model.named_parameters():
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
