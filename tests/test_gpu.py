"""CUDA-only paths: a 4-bit teacher and a QLoRA student (skipped without a GPU)."""

import pytest
import torch

from annotate import AnnotateConfig, load_task
from annotate.local import LocalTeacher
from distill import DistillConfig, hybrid_kd_loss, load_student

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bitsandbytes 4-bit)")]


def test_4bit_teacher_scores_like_the_bf16_teacher(tiny_llama):
    task = load_task("sentiment-binary")
    texts = ["I love this movie", "terrible and awful acting"]
    full = LocalTeacher(AnnotateConfig(teacher=str(tiny_llama), device="cuda", dtype="bfloat16"), task).score(texts)
    four = LocalTeacher(AnnotateConfig(teacher=str(tiny_llama), device="cuda", load_in_4bit=True), task).score(texts)
    assert all(a.error_type == "" for a in four)
    for a, b in zip(full, four):  # NF4 of a random tiny model moves log-probs, but not by much
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 0.5


def test_qlora_student_trains_adapters_only(tiny_llama):
    cfg = DistillConfig(student="llama-lora", student_model=str(tiny_llama), device="cuda", qlora=True)
    tok, model = load_student(cfg, ["negative", "positive"])
    enc = tok(["I love it", "I hate it"], padding=True, return_tensors="pt").to("cuda")
    loss = hybrid_kd_loss(model(**enc).logits, torch.log(torch.tensor([[0.1, 0.9], [0.9, 0.1]], device="cuda")), torch.tensor([1, 0], device="cuda"))
    loss.total.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n or "score" in n for n in grads)
