"""Online distillation: the frozen teacher's per-batch targets equal the offline ones."""

import pytest
import torch
from conftest import DEVICES, make_rows

from distillery.annotate import AnnotateConfig, annotate
from distillery.distill import DistillConfig, build_dataloaders, hybrid_kd_loss, load_student, load_training_rows
from distillery.distill.online import OnlineTeacher, Targets, load_online_rows


@pytest.mark.parametrize("device", DEVICES)
def test_online_and_offline_give_the_same_loss_on_the_same_batch(tiny_llama, tmp_path, device):
    make_rows(24).to_csv(tmp_path / "rows.csv", index=False)
    source = AnnotateConfig(
        data=str(tmp_path / "rows.csv"),
        text_column="review",
        label_column="sentiment",
        settings={"teacher": str(tiny_llama)},
        device=device,
        limit=0,
        out=str(tmp_path),
        test_fraction=0.0,
        calibrate="content-free",
    )
    annotate(source)
    cfg = DistillConfig(
        out=str(tmp_path),
        student_kind="llama-lora",
        student_model=str(tiny_llama),
        device=device,
        batch_size=8,
        group_by_length=False,
        max_length=64,
    )
    offline_rows = load_training_rows(cfg)
    online_rows = load_online_rows(cfg, source)
    assert offline_rows.train["text"].tolist() == online_rows.train["text"].tolist()

    tok, student = load_student(cfg, offline_rows.labels)
    student.to(device).eval()
    offline_batch = next(iter(build_dataloaders(cfg, tok, offline_rows)[0]))
    online_batch = next(iter(build_dataloaders(cfg, tok, online_rows)[0]))
    assert online_batch["texts"] == offline_batch["texts"]
    assert torch.isnan(online_batch["teacher_logprobs"]).all(), (
        "online rows carry no soft labels until the teacher runs"
    )

    teacher = OnlineTeacher(source, online_rows.labels, [])
    assert not any(p.requires_grad and p.grad is not None for p in teacher.teacher.scorer.model.parameters())
    online_batch = Targets(teacher)(online_batch)
    assert torch.allclose(online_batch["teacher_logprobs"].cpu(), offline_batch["teacher_logprobs"], atol=1e-5)
    assert torch.equal(online_batch["labels"].cpu(), offline_batch["labels"])
    offline_batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in offline_batch.items()}
    with torch.no_grad():
        logits = student(input_ids=offline_batch["input_ids"], attention_mask=offline_batch["attention_mask"]).logits
    a = hybrid_kd_loss(logits, offline_batch["teacher_logprobs"], offline_batch["labels"])
    b = hybrid_kd_loss(logits, online_batch["teacher_logprobs"], online_batch["labels"])
    assert abs(a.total.item() - b.total.item()) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_online_training_runs_from_raw_rows(tiny_llama, tiny_roberta, tmp_path, device):
    from distillery import cli as distillery_cli

    make_rows(24).to_csv(tmp_path / "rows.csv", index=False)
    code = distillery_cli.main(
        [
            "distill",
            "--teacher-mode",
            "online",
            "--data",
            str(tmp_path / "rows.csv"),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--teacher",
            str(tiny_llama),
            "--student-model",
            str(tiny_roberta),
            "--device",
            device,
            "--limit",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    assert not (tmp_path / "run" / "annotations").exists(), "online mode needs no annotation chunks"
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()


def test_the_resume_fingerprint_holds_the_teacher_settings_declared_to_change_its_answers(tmp_path):
    """A setting whose option() says answers=True (annotate's or the backend's own) is in the online
    fingerprint a resume compares; one that only changes speed is not, so changing it does not refuse
    a resume."""
    import dataclasses

    import pandas as pd

    from distillery.distill.checkpoint import data_change, online_fingerprint
    from distillery.distill.data import TrainingRows

    frame = pd.DataFrame({"id": ["a"], "text": ["good"], "gold": ["positive"], "split": ["train"]})
    rows = TrainingRows(["negative", "positive"], frame, frame, 0)
    base = AnnotateConfig(out=str(tmp_path), labels=["negative", "positive"])
    then = online_fingerprint(rows, base)
    assert {"backend", "teacher", "task", "dtype", "load_in_4bit"} <= then["teacher"].keys()
    other_dtype = dataclasses.replace(base, settings=dataclasses.replace(base.settings, dtype="float32"))
    assert "dtype 'auto' then, 'float32' now" in data_change(then, online_fingerprint(rows, other_dtype))[1]
    faster = dataclasses.replace(base, settings=dataclasses.replace(base.settings, teacher_batch_tokens=512))
    assert data_change(then, online_fingerprint(rows, faster)) is None
