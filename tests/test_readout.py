"""The student's readout (issue #38): a sentence-transformers checkpoint's classifier reads its token
states pooled as it was trained, and that student loads, exports, predicts, defers and gets a card."""

import json

import numpy as np
import pytest
import torch
from conftest import make_rows
from tiny import build_sentence_encoder
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distillery import cli as distillery_cli
from distillery.distill import DistillConfig
from distillery.student import load_student
from distillery.student.kinds import student_kind
from distillery.student.pooled import CODE_FILE, PooledEncoderForSequenceClassification

TEXTS = ["I love this movie", "terrible and awful, I hate this film so much", "great"]


@pytest.fixture(scope="module")
def sentence_encoder(tmp_path_factory):
    return build_sentence_encoder(tmp_path_factory.mktemp("sentence_encoder"))


def _built(model_path, readout="auto"):
    cfg = DistillConfig.from_flat({"student_model": str(model_path), "device": "cpu", "readout": readout})
    return student_kind("encoder").build(cfg, ["negative", "positive"])


def test_a_sentence_encoder_students_head_reads_its_mean_pooled_token_states(sentence_encoder):
    tokenizer, model = _built(sentence_encoder)
    assert isinstance(model, PooledEncoderForSequenceClassification)
    model.eval()
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        states = model.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        mean = (states * mask).sum(1) / mask.sum(1)
        # the head is one linear layer on the mean over each row's own tokens, padding left out
        torch.testing.assert_close(logits, model.classifier(mean))
        alone = model(**{k: v[:1, : int(enc["attention_mask"][0].sum())] for k, v in enc.items()}).logits
        torch.testing.assert_close(alone, logits[:1], atol=1e-5, rtol=1e-5)
    # the encoder's weights are the checkpoint's, its unused pooler is gone
    from transformers import AutoModel

    base = AutoModel.from_pretrained(sentence_encoder)
    assert torch.equal(base.encoder.layer[1].output.dense.weight, model.encoder.encoder.layer[1].output.dense.weight)
    assert getattr(model.encoder, "pooler", None) is None


def test_any_other_checkpoint_or_readout_head_keeps_the_checkpoints_own_head(sentence_encoder, tiny_roberta):
    from distillery.student.kinds import EncoderSettings

    assert EncoderSettings().readout == "head", "the default chosen on the tuning half (issue #38)"
    assert type(_built(tiny_roberta)[1]).__name__ == "RobertaForSequenceClassification"
    assert type(_built(sentence_encoder, readout="head")[1]).__name__ == "BertForSequenceClassification"
    pooled = _built(tiny_roberta, readout="mean")[1]
    assert isinstance(pooled, PooledEncoderForSequenceClassification)
    # a checkpoint saved with a head names its encoder's weights 'roberta.*': they are read all the same
    own = AutoModelForSequenceClassification.from_pretrained(tiny_roberta)
    assert torch.equal(
        own.roberta.encoder.layer[1].output.dense.weight, pooled.encoder.encoder.layer[1].output.dense.weight
    )


@pytest.fixture(scope="module")
def pooled_run(tiny_llama, sentence_encoder, tmp_path_factory):
    """`distillery run` with the tiny sentence encoder as the student: annotate, distill, evaluate, card."""
    out = tmp_path_factory.mktemp("pooled")
    make_rows(60).to_csv(out / "reviews.csv", index=False)
    args = ["run", "--data", str(out / "reviews.csv"), "--text-column", "review", "--label-column", "sentiment"]
    args += ["--labels", "negative,positive", "--teacher", str(tiny_llama), "--student-model", str(sentence_encoder)]
    args += [
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--min-steps",
        "30",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--readout",
        "auto",
    ]
    assert distillery_cli.main([*args, "--speed-rows", "8", "--out", str(out / "run")]) == 0
    return out / "run"


def test_a_pooled_student_loads_with_plain_transformers_and_with_distillery(pooled_run):
    folder = pooled_run / "student"
    config = json.loads((folder / "config.json").read_text())
    assert config["distillery_pooling"] == "mean" and config["model_type"] == "bert"
    assert (folder / CODE_FILE).is_file() and config["auto_map"]["AutoModelForSequenceClassification"]
    student = load_student(folder)
    assert isinstance(student.model, PooledEncoderForSequenceClassification)
    # a saved pooled student as --student-model (active --warm-start) starts from its weights, head and all
    _, again = _built(folder, readout="head")
    assert isinstance(again, PooledEncoderForSequenceClassification)
    torch.testing.assert_close(again.state_dict(), student.model.state_dict())
    plain = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(plain).__name__ == "PooledEncoderForSequenceClassification"
    enc = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = plain(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()
    z = logits / student.temperature + np.asarray(student.class_bias or 0.0)
    want = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(want / want.sum(1, keepdims=True), student.probabilities(TEXTS), atol=1e-5)
    card = (folder / "README.md").read_text()
    assert "trust_remote_code=True" in card


@pytest.mark.parametrize("variant", ["fp32", "int8", "int8-ffn-fp32"])
def test_a_pooled_students_onnx_export_holds_its_head_and_matches_pytorch(pooled_run, tmp_path, variant):
    out = tmp_path / variant
    args = ["export", "--student", str(pooled_run / "student"), "--onnx-dir", str(out), "--variant", variant]
    assert distillery_cli.main(args) == 0
    texts = make_rows(120)["review"].tolist() + TEXTS
    want = load_student(pooled_run / "student").probabilities(texts)
    onnx = load_student(out)
    got = onnx.probabilities(texts)
    assert np.abs(got - want).max() < (1e-5 if variant == "fp32" else 0.05)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    assert onnx.meta["export"]["graph"] == "fused"
    import onnx as onnx_lib

    ops = {node.op_type for node in onnx_lib.load(str(out / "model.onnx")).graph.node}
    assert "ReduceSum" in ops or "ReduceMean" in ops, "the mean pooling is inside the graph"


def test_a_pooled_student_predicts_and_defers(pooled_run, tmp_path):
    import pandas as pd

    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    args = ["predict", "--student", str(pooled_run / "student"), "--data", str(tmp_path / "in.csv")]
    assert distillery_cli.main([*args, "--predictions", str(tmp_path / "p.csv"), "--defer"]) == 0
    rows = pd.read_csv(tmp_path / "p.csv")
    assert len(rows) == len(TEXTS) and set(rows["label"]) <= {"negative", "positive"} and "deferred" in rows
