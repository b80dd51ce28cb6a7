"""Training mechanics: resume gives the same loss curve, gradient accumulation, 2 CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import DEVICES, make_rows

from distillery import cli as distillery_cli
from distillery.annotate import AnnotateConfig, annotate
from distillery.core.models import gpus_hidden
from distillery.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def annotated(tiny_llama, tmp_path_factory) -> Path:
    """A finished annotation run of 64 rows by the tiny teacher."""
    out = tmp_path_factory.mktemp("annotated")
    make_rows(64).to_csv(out / "rows.csv", index=False)
    annotate(
        AnnotateConfig(
            data=str(out / "rows.csv"),
            text_column="review",
            label_column="sentiment",
            settings={"teacher": str(tiny_llama)},
            device="cpu",
            limit=0,
            out=str(out),
            test_fraction=0.0,
        )
    )
    return out


@pytest.fixture(scope="module")
def no_dropout_roberta(tmp_path_factory):
    """The tiny RoBERTa without dropout, so runs can be compared number for number."""
    from tiny import build_roberta
    from transformers import AutoConfig

    path = build_roberta(tmp_path_factory.mktemp("roberta_nodrop"))
    cfg = AutoConfig.from_pretrained(path)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    cfg.save_pretrained(path)
    return path


def _log(student_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (student_dir / "train_log.jsonl").read_text().splitlines()]


def _cfg(annotated, model, out, **kw):
    kw = {"device": "cpu", **kw}
    return DistillConfig(
        out=str(annotated),
        student=str(out),
        student_model=str(model),
        batch_size=8,
        epochs=2,
        min_steps=0,
        val_fraction=0.125,
        lr=1e-3,
        **kw,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["encoder", "llama-lora"])
def test_resume_continues_the_same_loss_curve(annotated, tiny_roberta, tiny_llama, tmp_path, kind, device):
    model = tiny_roberta if kind == "encoder" else tiny_llama
    kw = {"student_kind": kind, "device": device}
    full = distill(_cfg(annotated, model, tmp_path / "full", **kw))
    curve = [r["loss"] for r in _log(full)]
    # The same run, stopped after 5 steps (a checkpoint every 5 steps), then resumed.
    part = _cfg(annotated, model, tmp_path / "part", checkpoint_every=5, **kw)
    import distillery.distill.loop as loop_mod

    class Stop(Exception):
        pass

    real = loop_mod.save_checkpoint

    def save_then_stop(*args):
        real(*args)
        raise Stop  # the process dies right after its first checkpoint

    loop_mod.save_checkpoint = save_then_stop
    try:
        with pytest.raises(Stop):
            distill(part)
    finally:
        loop_mod.save_checkpoint = real
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "part" / "checkpoint" / "model.safetensors")
    if kind == "llama-lora":  # the checkpoint holds what trains, not the frozen base (nor a 4-bit base's state)
        assert saved and all("lora_" in k or "modules_to_save" in k for k in saved), sorted(saved)[:5]
    resumed = distill(_cfg(annotated, model, tmp_path / "part", checkpoint_every=5, resume=True, **kw))
    log = _log(resumed)
    assert [r["step"] for r in log] == list(range(1, len(curve) + 1))
    assert [r["loss"] for r in log] == pytest.approx(curve, abs=1e-5 if device == "cpu" else 1e-3)


def test_gradient_accumulation_matches_the_full_batch(annotated, no_dropout_roberta, tmp_path):
    whole = _log(distill(_cfg(annotated, no_dropout_roberta, tmp_path / "whole", group_by_length=False)))
    accum = _log(distill(_cfg(annotated, no_dropout_roberta, tmp_path / "accum", group_by_length=False, grad_accum=2)))
    assert len(whole) == len(accum)
    # Logged losses are from the last micro-batch, so compare the validation curve instead.
    v1 = [r["val_loss"] for r in whole if "val_loss" in r]
    v2 = [r["val_loss"] for r in accum if "val_loss" in r]
    assert v1 == pytest.approx(v2, abs=2e-3)


@pytest.mark.integration
def test_two_cpu_processes_match_one(annotated, no_dropout_roberta, tmp_path):
    args = [
        "distill",
        "--out",
        str(annotated),
        "--student-model",
        str(no_dropout_roberta),
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--val-fraction",
        "0.125",
        "--lr",
        "1e-3",
    ]
    one = tmp_path / "one"
    assert distillery_cli.main(args + ["--student", str(one)]) == 0
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "distillery",
        *args,
        "--student",
        str(two),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((two / "train_summary.json").read_text())["processes"] == 2
    v1 = [r["val_loss"] for r in _log(one) if "val_loss" in r]
    v2 = [r["val_loss"] for r in _log(two) if "val_loss" in r]
    # Each process computes half of every batch and DDP averages the gradients: the same
    # update as one process up to float32 summation order (~1e-6 relative per step).
    assert v1 == pytest.approx(v2, abs=1e-4)
    from safetensors.torch import load_file

    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


def test_max_train_rows_trains_on_the_first_rows_only(annotated, tiny_roberta, tmp_path):
    out = distill(
        DistillConfig(
            out=str(annotated),
            student=str(tmp_path / "s"),
            student_model=str(tiny_roberta),
            epochs=1,
            max_train_rows=20,
            val_fraction=0.25,
            device="cpu",
        )
    )
    summary = json.loads((out / "train_summary.json").read_text())
    assert (summary["train_rows"], summary["val_rows"]) == (15, 5)


def test_small_sets_get_a_floor_of_optimizer_steps_and_automatic_settings(annotated, tiny_roberta, tmp_path):
    base = dict(
        out=str(annotated),
        student_model=str(tiny_roberta),
        epochs=1,
        max_train_rows=20,
        val_fraction=0.25,
        batch_size=8,
        device="cpu",
    )
    floor = distill(DistillConfig(student=str(tmp_path / "floor"), min_steps=12, **base))
    summary = json.loads((floor / "train_summary.json").read_text())
    # 15 training rows, batch 8: 2 steps an epoch, so 12 steps take 6 epochs.
    assert (summary["epochs"], summary["steps"]) == (6, 12) and len(_log(floor)) == 12
    card = (floor / "README.md").read_text()  # distill() writes the model card, as the command does
    assert "library_name: transformers" in card and "negative" in card
    plain = json.loads(
        (
            distill(DistillConfig(student=str(tmp_path / "plain"), min_steps=0, **base)) / "train_summary.json"
        ).read_text()
    )
    assert (plain["epochs"], plain["steps"]) == (1, 2)
    # lr per student kind; max length covers >= 95% of the training rows' token lengths.
    assert summary["lr"] == 5e-5
    from transformers import AutoTokenizer

    from distillery.distill.data import covering_length, load_training_rows

    tok = AutoTokenizer.from_pretrained(tiny_roberta)
    train_texts = load_training_rows(DistillConfig(**base)).train["text"].tolist()
    lengths = sorted(len(ids) for ids in tok(train_texts).input_ids)
    assert summary["max_length"] == covering_length(tok, train_texts, 300)
    assert summary["max_length"] % 8 == 0 and sum(n <= summary["max_length"] for n in lengths) >= 0.95 * len(lengths)
    assert summary["max_length"] - 8 < lengths[-1]  # and no more than that needs
    # covering_length itself: 100 texts of 1..100 words cover 95 of them; the model's limit caps it.
    words = [" ".join(["great"] * k) for k in range(1, 101)]
    n_tokens = sorted(len(ids) for ids in tok(words).input_ids)
    cover = covering_length(tok, words, None)
    assert sum(n <= cover for n in n_tokens) >= 95 and sum(n <= cover - 8 for n in n_tokens) < 95
    assert covering_length(tok, words, 16) == 16
    # Prediction reads texts up to the model's limit, not the training cut.
    assert (
        AutoTokenizer.from_pretrained(floor).model_max_length
        == AutoTokenizer.from_pretrained(tiny_roberta).model_max_length
    )


def test_head_warm_start_changes_only_the_head_and_lowers_the_loss(annotated, tiny_roberta):
    import torch

    from distillery.distill import build_dataloaders, hybrid_kd_loss, load_student, load_training_rows
    from distillery.distill.loop import warm_start_head
    from distillery.distill.online import Targets

    cfg = DistillConfig(
        out=str(annotated),
        student_model=str(tiny_roberta),
        device="cpu",
        batch_size=8,
        max_length=32,
        head_warmup_epochs=5,
    )
    rows = load_training_rows(cfg)
    tok, model = load_student(cfg, rows.labels)
    train_dl, _ = build_dataloaders(cfg, tok, rows)

    def loss():
        model.eval()
        with torch.no_grad():
            return sum(
                hybrid_kd_loss(
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                    b["teacher_logprobs"],
                    b["labels"],
                ).total.item()
                for b in train_dl
            )

    before, start = loss(), {n: p.detach().clone() for n, p in model.named_parameters()}
    warm_start_head(model, train_dl, cfg, Targets(), torch.device("cpu"))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert changed and all(n.startswith("classifier.") for n in changed)
    assert all(p.requires_grad for p in model.parameters()) and model.training
    assert loss() < before


def test_device_cpu_hides_the_gpus_for_the_run_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with gpus_hidden(True):  # what every process of `distillery distill --device cpu` runs under
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    with gpus_hidden(False):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


def _drawn(n: int, gen: torch.Generator, prior: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rows of true logits around a class prior, and labels drawn from them."""
    true = torch.randn(n, len(prior), generator=gen) * 1.5 + torch.tensor(prior).log()
    return true, torch.multinomial(torch.softmax(true, -1), 1, generator=gen).squeeze(1)


def test_a_three_times_overconfident_student_is_calibrated_from_its_gold_validation_rows():
    """Issue #28: a student three times too confident, scaled by the temperature ``auto`` fits against
    the gold labels of its validation rows, over 30 draws of those rows: with 200 training rows (20
    validation rows, which the rule before did not scale: it needed 50) the median ECE on fresh rows
    falls from over 0.1 to under 0.05 (T from 20 rows is noisy: under 0.03 in about 4 draws of 10);
    with 500 training rows (50 validation rows) under 0.03. Without gold, ``auto`` fits no temperature
    (against the teacher it made ECE worse on the tuning half) and says why."""
    from distillery.distill.scaling import MIN_SCALING_ROWS, pick_scaling, scaled_probabilities
    from distillery.evaluation.metrics import expected_calibration_error

    def ece_before_and_after(train_rows: int, seed: int) -> tuple[float, float]:
        gen = torch.Generator().manual_seed(seed)

        def student_of(true):  # three times too confident, and not quite its teacher
            return (true + torch.randn(true.shape, generator=gen) * 0.3) * 3

        true, gold = _drawn(round(train_rows * DistillConfig().val_fraction), gen, [1 / 3] * 3)
        scaling = pick_scaling(student_of(true).numpy(), torch.log_softmax(true, -1).numpy(), gold.numpy())
        fresh, labels = _drawn(20000, gen, [1 / 3] * 3)
        student = student_of(fresh).numpy()
        return tuple(
            expected_calibration_error(scaled_probabilities(student, t), labels.numpy())
            for t in (1.0, scaling.temperature)
        )

    assert round(200 * DistillConfig().val_fraction) >= MIN_SCALING_ROWS  # scaled at this size
    for train_rows, bound in ((200, 0.05), (500, 0.03)):
        before, after = np.median([ece_before_and_after(train_rows, seed) for seed in range(30)], axis=0)
        assert before > 0.1 and after < bound, f"{train_rows} rows: median ECE {before:.3f} before, {after:.3f} after"
    gen = torch.Generator().manual_seed(0)
    true, _ = _drawn(20, gen, [1 / 3] * 3)
    no_gold = pick_scaling((true * 3).numpy(), torch.log_softmax(true, -1).numpy())
    assert no_gold.temperature == 1.0 and no_gold.bias is None and "no gold" in no_gold.said


def test_the_class_bias_makes_a_90_10_students_shares_follow_its_teacher():
    """Issue #28: a student that under-says the small class of a 90/10 set (its logit for it 1.5 too
    low, as a student trained on few rows of it is) says it about as often as its teacher once
    ``--scaling bias`` fits the bias on the 50 validation rows of 500 training rows; the temperature
    alone (``--scaling auto``) cannot: it never moves the argmax. A student whose shares are right
    gets a bias near 0."""
    from distillery.distill.scaling import pick_scaling, scaled_probabilities

    gen = torch.Generator().manual_seed(2)

    def student_of(true, shift):
        return true + torch.tensor([0.0, shift]) + torch.randn(true.shape, generator=gen) * 0.3

    def share(probs):
        return float((probs.argmax(1) == 1).mean())

    val, _ = _drawn(50, gen, [0.9, 0.1])
    fresh, _ = _drawn(20000, gen, [0.9, 0.1])
    teacher_share = (fresh.argmax(1) == 1).float().mean().item()
    scaling = pick_scaling(student_of(val, -1.5).numpy(), torch.log_softmax(val, -1).numpy(), mode="bias")
    raw = scaled_probabilities(student_of(fresh, -1.5).numpy())
    adjusted = scaled_probabilities(student_of(fresh, -1.5).numpy(), scaling.temperature, scaling.bias)
    assert share(raw) < teacher_share / 2, f"the unadjusted student should under-say it: {share(raw):.3f}"
    auto = pick_scaling(student_of(val, -1.5).numpy(), torch.log_softmax(val, -1).numpy())
    assert auto.bias is None and share(scaled_probabilities(student_of(fresh, -1.5).numpy(), auto.temperature)) < (
        teacher_share / 2
    )
    assert abs(share(adjusted) - teacher_share) < 0.25 * teacher_share, (
        f"small class said on {share(adjusted):.3f} of rows after the bias, the teacher {teacher_share:.3f} "
        f"({scaling.said})"
    )
    assert scaling.bias[1] - scaling.bias[0] > 1.0 and "class bias" in scaling.said
    right = pick_scaling(student_of(val, 0.0).numpy(), torch.log_softmax(val, -1).numpy(), mode="bias")
    assert max(abs(b) for b in right.bias) < 0.2


def _passes(gen, hard: np.ndarray, plan) -> list[tuple[dict, np.ndarray]]:
    """Validation passes over ``hard`` labels: (step, agreement, mean loss) -> (record, row losses)."""
    out = []
    for step, agree, loss in plan:
        predicted = np.where(gen.random(len(hard)) < agree, hard, 1 - hard)
        accuracy, majority = float((predicted == hard).mean()), float(np.bincount(hard).max() / len(hard))
        record = {
            "step": step,
            "val_accuracy": accuracy,
            "val_majority": majority,
            "val_loss": loss,
            "at_least_majority": accuracy >= majority,
        }
        out.append((record, gen.normal(loss, 0.3, len(hard))))
    return out


def test_selection_never_keeps_a_below_majority_checkpoint_when_another_is_above():
    """Issue #28: on a noisy 50-row validation set (80% one label) the lowest validation loss fell on
    a step whose student agreed with the labels on 33% of the rows; the selection now keeps a step
    that agrees at least as often as always answering the majority label, and warns only when none
    does."""
    from distillery.distill.selection import majority_warning, select

    gen = np.random.default_rng(0)
    hard = np.array([0] * 40 + [1] * 10)
    passes = _passes(
        gen, hard, ((29, 0.8, 0.52), (58, 0.86, 0.47), (87, 0.33, 0.31), (116, 0.9, 0.44), (145, 0.9, 0.45))
    )
    assert not passes[2][0]["at_least_majority"]  # step 87: lowest loss, worst answers
    progress = {"best": None}
    for record, rows in passes:
        select(progress, record, rows)
    assert progress["best"]["step"] != 87 and progress["best"]["at_least_majority"]
    assert majority_warning(progress["best"]) is None
    # With no step at the majority, the lowest loss is kept and the run says so in one line.
    progress = {"best": None}
    for record, rows in (p for p in passes if not p[0]["at_least_majority"]):
        select(progress, record, rows)
    warning = majority_warning(progress["best"])
    assert progress["best"]["step"] == 87 and warning.count("\n") == 0 and "--class-weights none" in warning


def test_selection_keeps_the_last_step_the_validation_rows_cannot_tell_from_the_lowest():
    """Issue #28: the lowest validation loss on 50 rows fell on an early, barely trained step; a later
    step whose loss is within one standard error (paired, row by row) is kept instead, and a later step
    that is clearly worse (overfitting) is not."""
    from distillery.distill.selection import select

    gen = np.random.default_rng(1)
    hard = np.array([0] * 25 + [1] * 25)
    early, late, overfit = _passes(gen, hard, ((58, 0.8, 0.27), (290, 0.9, 0.28), (319, 0.9, 0.6)))
    # the same rows, a hair worse on average (+0.01) but noisier than that (±0.1: standard error 0.014)
    late = (late[0], early[1] + 0.01 + np.tile([0.1, -0.1], 25))
    overfit = (overfit[0], early[1] + 0.4)
    progress = {"best": None}
    for record, rows in (early, late, overfit):
        select(progress, record, rows)
    assert progress["best"]["step"] == 290 and progress["best"]["lowest_step"] == 58
    assert progress["lowest"]["step"] == 58
    # --keep-from 0.5 of 319 steps: the early pass is neither the lowest nor kept, and the overfit one
    # is now judged against the late pass
    progress = {"best": None}
    kept = [select(progress, record, rows, first_step=0.5 * 319) for record, rows in (early, late, overfit)]
    assert kept == [False, True, False] and progress["lowest"]["step"] == progress["best"]["step"] == 290


def test_a_checkpoint_from_before_the_row_losses_keeps_its_best_until_a_pass_beats_it():
    """A --resume from a checkpoint written before issue #28 (progress has a best, no lowest pass nor
    row losses): a worse pass does not replace the best, a better one does."""
    from distillery.distill.selection import select

    progress = {"best": {"step": 100, "val_loss": 0.3, "val_accuracy": 0.9, "val_majority": 0.5}}
    worse = {"step": 150, "val_loss": 0.9, "val_accuracy": 0.9, "val_majority": 0.5, "at_least_majority": True}
    assert not select(progress, worse, np.full(10, 0.9)) and progress["best"]["step"] == 100
    lower = {**worse, "step": 200, "val_loss": 0.2}
    assert select(progress, lower, np.full(10, 0.2)) and progress["best"]["step"] == 200


def test_the_fitted_temperature_is_saved_and_applied_wherever_the_student_is_loaded(annotated, tiny_roberta, tmp_path):
    from distillery.serve import load_student

    few = distill(_cfg(annotated, tiny_roberta, tmp_path / "few"))  # 8 validation rows: too few to fit a temperature on
    assert json.loads((few / "distillery_student.json").read_text())["temperature"] == 1.0
    assert "class_bias" not in json.loads((few / "distillery_student.json").read_text())
    out = distill(
        DistillConfig(
            out=str(annotated),
            student=str(tmp_path / "s"),
            student_model=str(tiny_roberta),
            batch_size=8,
            epochs=30,
            min_steps=0,
            val_fraction=0.8,
            lr=5e-3,
            device="cpu",
            scaling="bias",
        )
    )  # 51 validation rows, 13 overfitted
    meta = json.loads((out / "distillery_student.json").read_text())
    summary = json.loads((out / "train_summary.json").read_text())
    assert meta["temperature"] == summary["temperature"] and meta["temperature"] > 0
    assert meta["class_bias"] == summary["class_bias"] and len(meta["class_bias"]) == 2
    assert meta["class_bias"] != [0.0, 0.0]  # 13 overfitted rows: the student's shares are not the teacher's
    student = load_student(out)
    texts = ["I love this movie", "I hate this film", "the weather is fine"]
    enc = student.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = student.model(**enc).logits
    np.testing.assert_allclose(
        student.probabilities(texts),
        torch.softmax(logits / meta["temperature"] + torch.tensor(meta["class_bias"]), -1).numpy(),
        atol=1e-5,
    )


def test_class_weights_train_and_say_what_they_are(annotated, tiny_roberta, tmp_path, capsys):
    out = distill(_cfg(annotated, tiny_roberta, tmp_path / "w", class_weights="balanced"))
    said = capsys.readouterr().out
    assert "distill: class weights negative " in said and "(--class-weights balanced)" in said
    assert json.loads((out / "train_summary.json").read_text())["steps"] > 0
    assert yaml.safe_load((out / "distillery_config.yaml").read_text())["class_weights"] == "balanced"


def _imbalanced_run(root: Path, n: int = 200, small_share: float = 0.1, bright: tuple[int, int] = (7, 3)) -> Path:
    """A finished annotation run written by the real chunk store: 90% negative, 10% positive rows,
    the teacher sure of each (no teacher is asked). A word hints at the label: 70% of the positive
    rows say "bright", 70% of the negative ones "dull". Under the 90/10 prior a "bright" row is
    still most likely negative (0.1 x 0.7 < 0.9 x 0.3); with the classes weighted equally it is positive.
    ``bright``: how many in 10 positive and in 10 negative rows say "bright"."""
    from distillery.annotate.calibration import calibrate_chunks
    from distillery.annotate.chunks import ChunkStore

    n_small = int(n * small_share)
    labels = ["negative", "positive"]
    rows = []
    for i in range(n):
        label = "positive" if i < n_small else "negative"
        confident = np.log([0.05, 0.95]) if label == "positive" else np.log([0.95, 0.05])
        rows.append(
            {
                "id": f"r{i}",
                "text": f"{'bright' if i % 10 < bright[label == 'negative'] else 'dull'} story",
                "gold": label,
                "split": "train",
                "teacher_label": label,
                "logprob_negative": confident[0],
                "logprob_positive": confident[1],
                "raw_logprob_negative": confident[0],
                "raw_logprob_positive": confident[1],
                "label_mass": 0.9,
                "flags": "",
                "teacher": "synthetic",
                "prompt_hash": "0",
                "error_type": "",
                "error_message": "",
            }
        )
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)
    store = ChunkStore(
        root / "annotations",
        {"teacher": "synthetic"},
        {
            "config": {},
            "task": {"name": "sentiment-binary"},
            "labels": labels,
            "teacher": "synthetic",
            "prompt_hash": "0",
        },
    )
    store.write(0, frame)
    calibrate_chunks(store, labels, "none", None)
    return root


def test_balanced_class_weights_keep_a_small_class_the_unweighted_student_drops(tiny_roberta, tmp_path):
    """On a 90/10 set the unweighted student never says the small class (its best guess for a
    "bright" row is still the large one); with auto (balanced at 90/10) the same training says it."""
    from distillery.serve import load_student

    run = _imbalanced_run(tmp_path)
    said = {}
    for weights in ("none", "auto"):
        out = distill(
            DistillConfig(
                out=str(run),
                student=str(tmp_path / weights),
                student_model=str(tiny_roberta),
                device="cpu",
                batch_size=16,
                epochs=4,
                min_steps=0,
                val_fraction=0.1,
                lr=3e-3,
                class_weights=weights,
                scaling="none",  # the weights alone (the class bias would move the shares too)
            )
        )
        said[weights] = load_student(out).probabilities(["bright story", "dull story"])[:, 1]
    assert (said["none"] < 0.5).all(), (
        f"the unweighted student should never say positive here; P(positive) {said['none']}"
    )
    assert said["auto"][0] > 0.5 > said["auto"][1], (
        f"the weighted student should say positive for 'bright' only; P(positive) {said['auto']}"
    )
    summary = json.loads((tmp_path / "auto" / "train_summary.json").read_text())
    assert summary["class_weights"]["positive"] > 1
    counts = summary["train_label_counts"]  # what evaluate's dropped-class warning counts from
    assert sum(counts.values()) == summary["train_rows"] and counts["positive"] < counts["negative"] / 4


def test_logit_adjustment_moves_a_90_10_students_shares_toward_its_teachers(tiny_roberta, tmp_path):
    """Issue #38: 10% positive rows, 8 in 10 of them and 1 in 10 negative ones say "bright", so a
    "bright" row is still slightly more often negative (16 of 34). The plain student never says
    positive (share 0, its teacher 0.10); trained with ``--logit-adjustment 1`` (balanced softmax) the
    same student says it for "bright" rows (share 0.17), predicting from its logits alone."""
    from distillery.distill.data import load_training_rows
    from distillery.distill.losses import logit_offsets
    from distillery.serve import load_student

    run = _imbalanced_run(tmp_path, bright=(8, 1))
    shares = {}
    for tau in (0.0, 1.0):
        cfg = DistillConfig(
            out=str(run),
            student=str(tmp_path / f"tau{tau:g}"),
            student_model=str(tiny_roberta),
            device="cpu",
            batch_size=16,
            epochs=4,
            min_steps=0,
            val_fraction=0.1,
            lr=3e-3,
            class_weights="none",
            scaling="none",  # the adjustment alone (the class bias would move the shares too)
            logit_adjustment=tau,
        )
        student = load_student(distill(cfg))
        texts = load_training_rows(cfg).train["text"].tolist()
        shares[tau] = float((student.probabilities(texts).argmax(1) == 1).mean())
    teacher = 0.1
    assert shares[0.0] < teacher / 2, f"the plain student should (nearly) never say positive: {shares}"
    assert abs(shares[1.0] - teacher) < abs(shares[0.0] - teacher) and shares[1.0] > teacher, shares
    offsets = json.loads((tmp_path / "tau1" / "train_summary.json").read_text())["logit_offsets"]
    assert offsets["positive"] - offsets["negative"] == pytest.approx(np.log(1 / 9), abs=0.15)
    rows = load_training_rows(cfg)
    assert logit_offsets(0.0, rows) is None


@pytest.mark.parametrize("group", [True, False])
def test_every_row_trains_once_an_epoch_on_two_processes(group):
    """accelerate's split of a batch across processes (split_batches) keeps only full batches and
    the last one: the short batch of a length-grouped epoch must come last, or two processes
    silently skip it (and its optimizer step, and the epoch's last validation)."""
    from accelerate.data_loader import BatchSamplerShard

    from distillery.distill.data import EpochBatchSampler

    lengths = [(7 * i) % 23 + 1 for i in range(203)]  # 203 rows: batches of 8 leave one of 3
    sampler = EpochBatchSampler(lengths, 8, seed=0, group=group)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        shards = [list(BatchSamplerShard(sampler, 2, rank, split_batches=True)) for rank in range(2)]
        assert [len(s) for s in shards] == [len(sampler)] * 2, "one optimizer step per batch on each process"
        seen = {i for shard in shards for batch in shard for i in batch}
        assert seen == set(range(len(lengths))), "every row trains in every epoch"


def test_the_gold_ceiling_is_the_same_student_on_gold_labels_and_evaluate_reports_it(annotated, tiny_roberta, tmp_path):
    import shutil

    from sklearn.metrics import f1_score

    from distillery.core.errors import UserError
    from distillery.evaluation import EvaluateConfig, evaluate
    from distillery.evaluation.report import headline
    from distillery.student import load_student

    run = tmp_path / "run"
    shutil.copytree(annotated, run)
    base = dict(out=str(run), student_model=str(tiny_roberta), epochs=1, min_steps=4, batch_size=8, device="cpu")
    student = distill(DistillConfig(student=str(run / "student"), ceiling=True, **base))
    ceiling = run / "student-gold-ceiling"
    trained = yaml.safe_load((ceiling / "distillery_config.yaml").read_text())
    assert (trained["hard_labels"], trained["alpha"], trained["ceiling"]) == ("gold", 0.0, False)
    assert (ceiling / "train_summary.json").is_file() and student == run / "student"

    metrics = evaluate(EvaluateConfig(out=str(run), eval_split="all", speed_rows=0, device="cpu"))
    rows = pd.read_csv(run / "rows.csv")
    labels = metrics["labels"]
    texts, gold = rows["review"].tolist(), rows["sentiment"].map(labels.index).to_numpy()
    predicted = load_student(ceiling).probabilities(texts).argmax(1)
    assert metrics["ceiling"]["macro_f1"] == pytest.approx(f1_score(gold, predicted, average="macro"), abs=1e-9)
    ratio = metrics["student"]["macro_f1"] / metrics["ceiling"]["macro_f1"]
    assert metrics["student"]["macro_f1_vs_ceiling"] == pytest.approx(ratio)
    assert "gold-trained ceiling" in headline(metrics)
    assert "Gold-trained ceiling" in (run / "report.md").read_text()
    with pytest.raises(UserError, match="--teacher-mode offline"):
        DistillConfig(student=str(tmp_path / "x"), ceiling=True, teacher_mode="online", **base)
