"""Reading a server's log-probabilities: the first answer token's ``top_logprobs`` (chat) and the echoed
prompt's token log-probs (completions, ``--hosted-scoring echo``), as the hosted teacher parses them."""

from __future__ import annotations

import math

from distillery.core.errors import UserError

__all__ = ["PROBE", "echo_is_shifted", "echo_label_logprob", "labels_from_top_logprobs"]


def labels_from_top_logprobs(
    top: list[tuple[str, float]], verbalizers: list[str]
) -> tuple[list[float], float, list[str]]:
    """Per-label log-probs from ``(token, logprob)`` pairs of one position.

    Returns ``(logprobs renormalised over the labels, covered mass, labels bounded)``.
    """
    words = [v.strip().casefold() for v in verbalizers]
    mass = [0.0] * len(words)
    for token, logprob in top:
        t = token.strip().casefold()
        hits = [i for i, w in enumerate(words) if t and w.startswith(t)]
        if len(hits) == 1:  # a token that begins two labels tells them apart not at all
            mass[hits[0]] += math.exp(logprob)
    floor = min(lp for _, lp in top) if top else -math.inf
    bounded = [verbalizers[i].strip() for i, m in enumerate(mass) if m == 0.0]
    raw = [math.log(m) if m > 0 else floor for m in mass]
    covered = sum(mass)
    total = math.log(sum(math.exp(x) for x in raw)) if any(math.isfinite(x) for x in raw) else -math.inf
    return [x - total for x in raw], covered, bounded


def echo_label_logprob(logprobs: dict, verbalizer: str, generated: str, shifted: bool) -> tuple[float, bool]:
    """log P(verbalizer | prompt) from the echo of ``prompt + verbalizer`` (+ ``generated``).

    ``logprobs``: the completion's ``{tokens, token_logprobs, top_logprobs}``. The label's
    tokens are found from the end of the echo (some servers list the generated token, some do
    not; llama.cpp's character offsets skip special tokens, so they are not used).
    ``shifted``: llama.cpp's layout, where entry i holds the distribution that predicts token
    i+1; the log-prob of token i is then looked up in ``top_logprobs[i-1]``, and when it is
    not among those top tokens the smallest of them bounds it from above.
    Returns ``(log-prob, bounded)``.
    """
    tokens = logprobs["tokens"]
    ends = [len(tokens) - k for k in range(1, 4) if generated and "".join(tokens[len(tokens) - k :]) == generated] + [
        len(tokens)
    ]
    for end in ends:
        start, text = end, ""
        while start > 1 and len(text) < len(verbalizer):
            start -= 1
            text = tokens[start] + text
        if text == verbalizer:
            break
    else:
        raise UserError(
            f"the echo does not end in the label's own tokens ({verbalizer!r} merged with the prompt or the answer)"
        )
    total, bounded = 0.0, False
    for i in range(start, end):
        if not shifted:
            total += logprobs["token_logprobs"][i]
            continue
        top = logprobs["top_logprobs"][i - 1] or {}
        if tokens[i] in top:
            total += top[tokens[i]]
        else:
            total, bounded = total + min(top.values(), default=-math.inf), True
    return total, bounded


PROBE = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"  # the later numbers are near-certain


def echo_is_shifted(logprobs: dict) -> bool:
    """True when an echoed ``head + PROBE`` shows llama.cpp's one-position-late log-probs.

    llama.cpp is late when it adds a BOS token the echo does not list (a prompt that does not
    start with a special token), so the probe starts like the real prompts do.
    """
    tokens, aligned, late = logprobs["tokens"], [], []
    for i in range(len(tokens) - 14, len(tokens) - 1):  # the last numbers, not the generated token
        aligned.append(logprobs["token_logprobs"][i] or -30.0)
        late.append((logprobs["top_logprobs"][i - 1] or {}).get(tokens[i], -30.0))
    return sum(late) > sum(aligned)
