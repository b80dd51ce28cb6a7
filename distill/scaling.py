"""Post-hoc scaling of a trained student's logits, fitted against its teacher's soft labels.

``softmax(logits / T + b)``: a temperature T (Guo et al. 2017) and a bias per class (vector scaling
with a shared scale; the prior correction of Saerens et al. 2002 and the post-hoc logit adjustment
of Menon et al. 2021), fitted to minimise the cross-entropy against the teacher's calibrated
distribution on rows the student did not train on. Every annotated row has that distribution, so
the fit does not wait for gold labels, and it needs no threshold: at its optimum the student's mean
probability of each class on those rows equals the teacher's (the gradient in b is their
difference), so a class the student under-predicts gets its share back, and its confidence matches
the teacher's. The labels it predicts move only through b (T alone never changes the argmax).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["fit_scaling", "scaled_probabilities"]

T_RANGE = (0.05, 20.0)  # safety bounds of the fitted temperature (a fit outside means a degenerate set)
B_RANGE = 10.0  # and of each class bias


def fit_scaling(
    logits: np.ndarray | torch.Tensor, teacher_logprobs: np.ndarray | torch.Tensor, bias: bool = True
) -> tuple[float, list[float] | None]:
    """``(T, b)`` minimising the mean cross-entropy of ``softmax(logits / T + b)`` against
    ``softmax(teacher_logprobs)`` (rows with a non-finite teacher value are left out); ``b`` is None
    with ``bias=False`` and sums to 0 otherwise. ``(1.0, None)`` when no row is left."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    teacher = torch.as_tensor(np.asarray(teacher_logprobs), dtype=torch.float64)
    keep = torch.isfinite(teacher).all(-1) & torch.isfinite(z).all(-1)
    z, target = z[keep], torch.softmax(teacher[keep], -1)
    if len(z) == 0:
        return 1.0, None
    z = z - z.mean(-1, keepdim=True)  # log-probs or logits: the same fit (softmax ignores a per-row shift)
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=bias)
    params = [log_scale, shift] if bias else [log_scale]
    optimizer = torch.optim.LBFGS(params, max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = -(target * torch.log_softmax(z * log_scale.exp() + shift, -1)).sum(-1).mean()
        value.backward()
        return value

    optimizer.step(loss)
    temperature = float((-log_scale.detach()).exp().clamp(*T_RANGE))
    if not math.isfinite(temperature):
        return 1.0, None
    if not bias:
        return temperature, None
    b = shift.detach().clamp(-B_RANGE, B_RANGE)
    return temperature, (b - b.mean()).tolist()


def scaled_probabilities(logits: np.ndarray, temperature: float = 1.0, bias: list[float] | None = None) -> np.ndarray:
    """``softmax(logits / T + b)`` row by row (numpy; ``b`` None = no bias)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if bias is not None:
        z = z + np.asarray(bias)
    z = np.exp(z - z.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)
