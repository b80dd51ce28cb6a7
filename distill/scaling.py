"""Post-hoc scaling of a trained student's logits: ``softmax(logits / T + b)``.

A temperature T (Guo et al. 2017), fitted on the validation rows after training against their gold
labels and used only when a likelihood-ratio test at 5% says it fits clearly better than T = 1
(``--scaling auto``); it changes the confidence and never the label. ``--scaling bias`` first fits
a bias per class (the prior correction of Saerens et al. 2002; the post-hoc logit adjustment of
Menon et al. 2021) against the teacher's calibrated distribution, which every annotated row has: at
its optimum the student's mean probability of each class on those rows equals the teacher's (the
gradient in b is their difference), so a class the student under-says gets its share back.

Chosen on the tuning half of benchmarks/every_class.py (docs/usage.md, "Every class"), 3 seeds:
the class bias (the default chosen on the first seed) lost on all three in macro-F1 and ECE; a T
fitted against the teacher's distribution (what a user without gold would get) made ECE worse
than none, so ``auto`` fits nothing without gold. Also measured and not kept: T and b fitted jointly
against the teacher, and a bias that matches the teacher's argmax shares (noisier).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from scipy.stats import chi2

from distillery.core.annotations import label_columns
from distillery.core.models import predict_probabilities

if TYPE_CHECKING:
    from distillery.distill.data import TrainingRows
    from distillery.distill.online import OnlineTeacher

__all__ = [
    "Scaling",
    "fit_bias",
    "fit_scaling",
    "fit_student_scaling",
    "fit_temperature",
    "pick_scaling",
    "scaled_probabilities",
]

T_RANGE = (0.05, 20.0)  # safety bounds of a fitted temperature (a fit outside means a degenerate set)
B_RANGE = 10.0  # and of each class bias
LEVEL = 0.95  # the likelihood-ratio tests of --scaling auto
MIN_SCALING_ROWS = 10  # validation rows --scaling needs (its likelihood-ratio tests are asymptotic)


def _tensors(logits, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits (centred per row) and target distributions, rows with a non-finite value left out."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
    keep = torch.isfinite(t).all(-1) & torch.isfinite(z).all(-1)
    z = z[keep]
    return z - z.mean(-1, keepdim=True), torch.softmax(t[keep], -1)


def _cross_entropy(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * torch.log_softmax(z, -1)).sum(-1).mean()


def _minimise(params: list[torch.Tensor], loss) -> None:
    optimizer = torch.optim.LBFGS(params, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)


def fit_scaling(logits, teacher_logprobs) -> tuple[float, list[float] | None]:
    """``(T, b)`` minimising the mean cross-entropy of ``softmax(logits / T + b)`` against
    ``softmax(teacher_logprobs)`` jointly: an alternative benchmarks/every_class.py measures (worse
    than distill's rule, docs/usage.md "Every class"), not a default; ``b`` sums to 0. ``(1.0, None)``
    when no row has finite values."""
    z, target = _tensors(logits, teacher_logprobs)
    if len(z) == 0:
        return 1.0, None
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    _minimise([log_scale, shift], lambda: _cross_entropy(z * log_scale.exp() + shift, target))
    temperature = float((-log_scale.detach()).exp().clamp(*T_RANGE))
    if not math.isfinite(temperature):
        return 1.0, None
    return temperature, _centred(shift)


def fit_temperature(logits, targets, bias: list[float] | None = None) -> tuple[float, float]:
    """``(T, likelihood ratio of T against 1)``: the T minimising the cross-entropy of
    ``softmax(logits / T + bias)`` against ``softmax(targets)`` (one-hot log-probs for gold labels)."""
    z, target = _tensors(logits, targets)
    if len(z) == 0:
        return 1.0, 0.0
    b = torch.zeros(z.shape[1], dtype=torch.float64) if bias is None else torch.as_tensor(bias, dtype=torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    _minimise([log_t], lambda: _cross_entropy(z / log_t.exp() + b, target))
    temperature = float(log_t.detach().exp().clamp(*T_RANGE))
    if not math.isfinite(temperature):
        return 1.0, 0.0
    with torch.no_grad():
        gain = 2 * len(z) * float(_cross_entropy(z + b, target) - _cross_entropy(z / temperature + b, target))
    return temperature, gain


def fit_bias(logits, teacher_logprobs) -> list[float] | None:
    """The class bias b minimising the cross-entropy of ``softmax(logits + b)`` against the teacher's
    distribution (the logits as trained, T 1); None when no row has finite values."""
    z, target = _tensors(logits, teacher_logprobs)
    if len(z) == 0:
        return None
    shift = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    _minimise([shift], lambda: _cross_entropy(z + shift, target))
    return _centred(shift)


def _centred(shift: torch.Tensor) -> list[float] | None:
    """The bias within [-B_RANGE, B_RANGE], summing to 0; None when the fit did not converge."""
    b = shift.detach().clamp(-B_RANGE, B_RANGE)
    return (b - b.mean()).tolist() if torch.isfinite(b).all() else None


class Scaling(NamedTuple):
    """What :func:`pick_scaling` chose, and one line saying why."""

    temperature: float
    bias: list[float] | None
    said: str


def pick_scaling(logits, teacher_logprobs, gold: np.ndarray | None = None, mode: str = "auto") -> Scaling:
    """``--scaling``'s rule on the validation rows: ``logits`` (or log-probs) of the student, the
    teacher's log-probs, and ``gold`` label ids where every row has one (else None).

    ``auto``: a temperature T against the gold labels, used only when its likelihood-ratio test against
    T = 1 passes at 5%; no gold, no T. ``bias``: first a class bias against the teacher (always), then
    T with that bias held, against gold or else the teacher, with the same test. ``none``: ``(1.0, None)``."""
    if mode == "none" or len(logits) == 0:
        return Scaling(1.0, None, "none")
    if mode == "auto" and gold is None:
        return Scaling(1.0, None, "no temperature: the validation rows have no gold label to fit it against")
    bias = fit_bias(logits, teacher_logprobs) if mode == "bias" else None
    said_bias = ""
    if bias is not None:
        said_bias = f"class bias {', '.join(f'{b:+.2f}' for b in bias)} (against the teacher); "
    elif mode == "bias":
        said_bias = "no class bias (the fit did not converge); "
    k = np.asarray(logits).shape[1]
    against = "gold labels" if gold is not None else "the teacher"
    targets = np.log(np.maximum(np.eye(k)[gold], 1e-300)) if gold is not None else teacher_logprobs
    fitted, gain = fit_temperature(logits, targets, bias)
    needed = chi2.ppf(LEVEL, 1)
    temperature = fitted if gain >= needed else 1.0
    said_t = (
        f"T {temperature:.3f} (against {against}; likelihood ratio {gain:.1f})"
        if temperature != 1.0
        else f"no temperature (T {fitted:.3f} against {against}: likelihood ratio {gain:.2f} < {needed:.2f})"
    )
    return Scaling(temperature, bias, said_bias + said_t)


def scaled_probabilities(logits, temperature: float = 1.0, bias: list[float] | None = None) -> np.ndarray:
    """``softmax(logits / T + b)`` row by row (numpy; ``b`` None = no bias)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if bias is not None:
        z = z + np.asarray(bias)
    z = np.exp(z - z.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


def fit_student_scaling(
    mode: str, model, tokenizer, rows: TrainingRows, online: OnlineTeacher | None, say=print
) -> tuple[float, list[float] | None]:
    """``--scaling MODE``: the student's post-hoc ``(T, b)`` (:func:`pick_scaling`) on the validation rows,
    T against their gold labels where every one has one (``bias``: else against the teacher), b
    (``bias`` only) against the teacher's calibrated distribution (``online``: the teacher scores them
    now). None under :data:`MIN_SCALING_ROWS` validation rows."""
    val, labels = rows.val, rows.labels
    if mode == "none":
        return 1.0, None
    if len(val) < MIN_SCALING_ROWS:
        say(f"distill: no post-hoc scaling ({len(val)} validation rows; it needs {MIN_SCALING_ROWS})")
        return 1.0, None
    texts = val["text"].tolist()
    model.eval()
    probs = predict_probabilities(model, tokenizer, texts, 32)  # whole texts, as the student reads them
    # Log-probabilities are the logits shifted per row: softmax(log p / T + b) = softmax(logits / T + b).
    logits = np.log(np.maximum(probs, np.finfo(np.float32).tiny))
    if online is None:
        teacher = val[label_columns(labels)].to_numpy(np.float64)
    else:
        teacher = online.targets(texts, None)[0].float().cpu().numpy()
    gold = None
    if "gold" in val and val["gold"].isin(labels).all():
        gold = val["gold"].map(labels.index).to_numpy()
    scaling = pick_scaling(logits, teacher, gold, mode)
    say(f"distill: post-hoc scaling on {len(val)} validation rows: {scaling.said}")
    return scaling.temperature, scaling.bias
