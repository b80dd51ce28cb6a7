"""CUDA-only paths: a 4-bit teacher and a QLoRA student (skipped without a GPU)."""

import pytest
import torch

from distillery.annotate import AnnotateConfig, load_task
from distillery.annotate.backends import build_teacher
from distillery.distill import DistillConfig, hybrid_kd_loss, load_student

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bitsandbytes 4-bit)"),
]


def test_4bit_teacher_scores_like_the_bf16_teacher(tiny_llama):
    task = load_task("sentiment-binary")
    texts = ["I love this movie", "terrible and awful acting"]
    full = build_teacher(
        AnnotateConfig(device="cuda", settings={"teacher": str(tiny_llama), "dtype": "bfloat16"}), task
    ).score(texts)
    four = build_teacher(
        AnnotateConfig(device="cuda", settings={"teacher": str(tiny_llama), "load_in_4bit": True}), task
    ).score(texts)
    assert all(a.error_type == "" for a in four)
    for a, b in zip(full, four):  # NF4 of a random tiny model moves log-probs, but not by much
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 0.5


def test_qlora_student_trains_adapters_only(tiny_llama):
    cfg = DistillConfig(
        student_kind="llama-lora", student_model=str(tiny_llama), device="cuda", settings={"qlora": True}
    )
    tok, model = load_student(cfg, ["negative", "positive"])
    enc = tok(["I love it", "I hate it"], padding=True, return_tensors="pt").to("cuda")
    loss = hybrid_kd_loss(
        model(**enc).logits,
        torch.log(torch.tensor([[0.1, 0.9], [0.9, 0.1]], device="cuda")),
        torch.tensor([1, 0], device="cuda"),
    )
    loss.total.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n or "score" in n for n in grads)


def test_qlora_checkpoint_resumes_and_evaluates_on_the_4bit_base(tiny_llama, tmp_path):
    from conftest import make_rows

    from distillery.annotate import annotate
    from distillery.distill import distill, load_trained_student

    make_rows(48).to_csv(tmp_path / "rows.csv", index=False)
    annotate(
        AnnotateConfig(
            data=str(tmp_path / "rows.csv"),
            text_column="review",
            label_column="sentiment",
            settings={"teacher": str(tiny_llama)},
            device="cuda",
            limit=0,
            out=str(tmp_path),
            test_fraction=0.0,
        )
    )
    cfg = DistillConfig(
        out=str(tmp_path),
        student_kind="llama-lora",
        student_model=str(tiny_llama),
        device="cuda",
        batch_size=8,
        epochs=2,
        min_steps=0,
        val_fraction=0.125,
        lr=1e-3,
        checkpoint_every=3,
        settings={"qlora": True},
    )
    student = distill(cfg)
    from dataclasses import replace

    resumed = distill(replace(cfg, resume=True))  # the crash of issue #10: unexpected absmax/quant_map keys
    assert resumed == student
    assert load_trained_student(student, "cuda")[1].evaluated_base == "4-bit NF4 base, as trained"
