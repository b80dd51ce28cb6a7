"""Verbalizer scoring: full label sequences, left padding, colliding first tokens, renormalisation."""

import math

import pytest
import torch
from conftest import DEVICES
from transformers import AutoModelForCausalLM, AutoTokenizer

from distillery.annotate.backends import build_teacher
from distillery.annotate.config import AnnotateConfig
from distillery.annotate.local import VerbalizerScorer
from distillery.annotate.teacher import normalise
from distillery.core.tasks import TaskSpec, load_task

# How far the shared-prefix KV cache may move a label log-prob. float32: summation order only.
# bfloat16: up to 9.9e-4 measured on an H100 with the tiny model (1.0e-5 on this CPU), so 2e-3;
# labels whose two best scores are closer than that may swap (issue #10).
PREFIX_CACHE_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-3}


def _reference(model, prompt, label_ids):
    """log P(label | prompt) from one unpadded forward pass over prompt + label."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + label_ids])).logits[0].float(), -1)
    return sum(logp[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(label_ids))


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


def test_multi_token_labels_match_unbatched_reference(llama):
    tok, model = llama
    words = [" negative", " positive", " neutral"]
    label_ids = [tok(w, add_special_tokens=False).input_ids for w in words]
    assert max(len(ids) for ids in label_ids) > 1, "the test needs multi-token labels"
    assert label_ids[0][0] == label_ids[2][0], "the test needs two labels whose first tokens collide"
    prompts = [
        tok(t).input_ids for t in ["I love this movie", "the weather is fine today, nothing special at all", "hate"]
    ]
    got = VerbalizerScorer(model, label_ids, tok.pad_token_id).label_logprobs(prompts)
    want = torch.tensor([[_reference(model, p, ids) for ids in label_ids] for p in prompts])
    assert torch.allclose(got, want, atol=1e-4)
    assert got[:, 0].ne(got[:, 2]).all(), "colliding first tokens must still give different scores"


def test_batched_equals_one_by_one(llama):
    tok, model = llama
    label_ids = [tok(w, add_special_tokens=False).input_ids for w in [" negative", " positive"]]
    scorer = VerbalizerScorer(model, label_ids, tok.pad_token_id)
    prompts = [tok(t).input_ids for t in ["a", "what a great and wonderful day it was", "terrible"]]
    batched = scorer.label_logprobs(prompts)
    single = torch.cat([scorer.label_logprobs([p]) for p in prompts])
    assert torch.allclose(batched, single, atol=1e-4)


def test_normalise_renormalises_over_labels_and_keeps_the_mass():
    ann = normalise([math.log(0.2), math.log(0.3)])
    assert sum(math.exp(x) for x in ann.logprobs) == pytest.approx(1.0)
    assert math.exp(ann.logprobs[0]) == pytest.approx(0.4)
    assert ann.mass == pytest.approx(0.5)
    assert normalise([-math.inf, -math.inf]).error_type == "no_label_mass"


@pytest.mark.parametrize("device", DEVICES)
def test_local_teacher_prompt_ends_with_answer_prefix_and_scores(tiny_llama, device):
    task = load_task("sentiment-binary")
    teacher = build_teacher(AnnotateConfig(settings={"teacher": str(tiny_llama)}, device=device), task)
    text = teacher.tokenizer.decode(teacher.prompt_ids("great fun"))
    assert text.endswith("<|im_start|>assistant\nThe sentiment is")
    assert "negative or positive.\n\ngreat fun" in text
    out = teacher.score(["great fun", "awful acting"])
    assert all(a.error_type == "" for a in out)
    assert all(sum(math.exp(x) for x in a.logprobs) == pytest.approx(1.0) and 0 < a.mass <= 1 for a in out)


def test_too_long_prompt_is_an_error_row_not_an_exception(tiny_llama):
    teacher = build_teacher(
        AnnotateConfig(settings={"teacher": str(tiny_llama)}, device="cpu", max_prompt_tokens=200),
        load_task("sentiment-binary"),
    )
    out = teacher.score(["short", "long " * 200])
    assert out[0].error_type == "" and out[0].logprobs is not None
    assert out[1].error_type == "prompt_too_long" and out[1].logprobs is None


def test_task_needs_two_labels():
    with pytest.raises(ValueError, match="at least two labels"):
        TaskSpec(name="t", labels=["positive"], instruction="{text}")
    with pytest.raises(ValueError, match="at least two labels"):
        load_task("sentiment-binary", labels=["positive"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_prefix_cache_gives_the_same_scores(tiny_llama, device, dtype):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype).to(device).eval()
    tolerance = PREFIX_CACHE_TOLERANCE[dtype]
    label_ids = [tok(w, add_special_tokens=False).input_ids for w in [" negative", " positive", " neutral"]]
    prefix = tok("Classify the sentiment of these reviews, one at a time, carefully:").input_ids
    rows = [
        prefix + tok(t, add_special_tokens=False).input_ids
        for t in [" a", " what a great and wonderful day it was", " meh"]
    ]
    rows.append(tok("no shared prefix here").input_ids)  # scored in full
    plain = VerbalizerScorer(model, label_ids, tok.pad_token_id).label_logprobs(rows)
    cached = VerbalizerScorer(model, label_ids, tok.pad_token_id)
    cached.set_prefix(prefix)
    assert torch.allclose(cached.label_logprobs(rows), plain, atol=tolerance)
    assert torch.allclose(
        cached.label_logprobs(rows[:2]), plain[:2], atol=tolerance
    )  # the cache is reused, not consumed


@pytest.mark.parametrize("device", DEVICES)
def test_local_teacher_prefix_cache_on_and_off_agree(tiny_llama, device):
    task = load_task("sentiment-binary")
    task.few_shot = [{"text": "loved it", "label": "positive"}, {"text": "boring and long", "label": "negative"}]
    texts = ["great fun", "awful acting", "\n\nstarts with newlines", "ok"]
    on = build_teacher(AnnotateConfig(settings={"teacher": str(tiny_llama)}, device=device), task)
    off = build_teacher(
        AnnotateConfig(device=device, settings={"teacher": str(tiny_llama), "prefix_cache": False}), task
    )
    tolerance = PREFIX_CACHE_TOLERANCE[on.scorer.model.dtype]  # the teacher runs in bf16 on CUDA
    prefix = on.scorer.prefix_ids
    assert len(prefix) > 20 and not off.scorer.prefix_ids
    assert sum(on.prompt_ids(t)[: len(prefix)] == prefix for t in texts) >= 3
    for a, b in zip(on.score(texts), off.score(texts)):
        assert a.logprobs == pytest.approx(b.logprobs, abs=tolerance)


def test_teacher_batches_cap_rows_and_padded_tokens():
    from distillery.annotate.backends import teacher_batches

    lengths = [5, 50, 10, 10, 200, 7]
    # Shortest first; [0, 5, 2] pads to 3 x 10 = 30 <= 40 tokens; a 4th row would break the 3-row cap;
    # 2 x 50 > 40, so row 1 goes alone, and so does row 4, longer than the whole budget.
    assert teacher_batches(lengths, max_rows=3, max_tokens=40) == [[0, 5, 2], [3], [1], [4]]
    assert teacher_batches(lengths, max_rows=16) == [[0, 5, 2, 3, 1, 4]]  # no token cap
    assert teacher_batches([], 4, 100) == []


def test_prompt_lengths_count_the_tokens_after_the_cached_prefix(tiny_llama):
    teacher = build_teacher(
        AnnotateConfig(settings={"teacher": str(tiny_llama)}, device="cpu"), load_task("sentiment-binary")
    )
    texts = ["great fun", "awful acting, a long and terrible film"]
    n = len(teacher.scorer.prefix_ids)
    assert n > 0
    assert teacher.prompt_lengths(texts) == [len(teacher.prompt_ids(t)) - n for t in texts]
    cached = teacher.score(texts)  # scored from the ids prompt_lengths kept
    teacher.tokenized = {}
    assert [a.logprobs for a in cached] == [a.logprobs for a in teacher.score(texts)]
