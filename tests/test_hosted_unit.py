"""The hosted teacher's mapping from top-K tokens to label log-probs (no server needed)."""

import math

import pytest

from annotate.hosted import labels_from_top_logprobs


def test_case_and_space_variants_are_summed_and_renormalised():
    top = [(" positive", math.log(0.5)), ("Positive", math.log(0.2)), (" negative", math.log(0.1)), (" the", math.log(0.1))]
    logprobs, covered, bounded = labels_from_top_logprobs(top, ["negative", "positive"])
    assert [math.exp(x) for x in logprobs] == pytest.approx([0.125, 0.875])
    assert covered == pytest.approx(0.8) and bounded == []


def test_a_missing_label_is_bounded_by_the_smallest_returned_logprob_and_flagged():
    top = [("positive", math.log(0.6)), ("great", math.log(0.05))]
    logprobs, covered, bounded = labels_from_top_logprobs(top, ["negative", "positive"])
    assert bounded == ["negative"]
    raw_negative = math.log(0.05)  # the bound, not an invented number
    assert logprobs[0] - logprobs[1] == pytest.approx(raw_negative - math.log(0.6))


def test_a_token_that_begins_two_labels_counts_for_neither():
    top = [("ne", math.log(0.5)), ("neutral", math.log(0.3)), ("negative", math.log(0.1))]
    logprobs, _, _ = labels_from_top_logprobs(top, ["negative", "neutral"])
    assert [math.exp(x) for x in logprobs] == pytest.approx([0.25, 0.75])
