"""Teacher calibration: turn raw label log-probs into calibrated ones.

Every mode is a per-label bias and a temperature applied to the raw log-probs
(:func:`calibrated`); they differ in how the bias is found:

- ``none``: no change.
- ``mean``: the mean raw log-prob of each label over the annotated rows. Removes the teacher's
  own label bias, and with it the data's label prior: it assumes the labels are balanced.
- ``content-free``: the log-probs the teacher gives to content-free inputs (Zhao et al. 2021,
  "Calibrate before use"). Also assumes a uniform prior.
- ``mean+em``: the mean correction, then the data's label prior estimated without gold
  labels by EM on the teacher's posteriors (Saerens, Latinne & Decaestecker 2002, "Adjusting
  the outputs of a classifier to new a priori probabilities") and put back. Measured: it
  moves little from ``mean``, because the teacher's posteriors are far from calibrated
  (on top of content-free it collapses onto one label, so that is not offered).
- ``content-free+gmm`` / ``mean+gmm``: a Gaussian mixture with one component per label and a
  shared covariance, fitted by EM to the teacher's label log-odds and started from that
  correction's labels (after prototypical calibration, Han et al. 2023, ICLR, "Prototypical
  calibration for few-shot learning of language models"). Its mixture weights estimate the
  label prior and its shared covariance acts as a temperature: no gold labels needed, and its
  probabilities are better calibrated where the log-odds are near Gaussian. Measured: on a
  par with ``content-free``, not better (README, "Calibration under label shift").
- ``gold``: a per-label bias and one temperature fitted by maximum likelihood on gold rows
  (the bias then carries the prior of those rows).
- ``reviewed``: the same fit as ``gold`` on the human labels ``distillery review`` imported
  (``OUT/review/gold.csv``): every reviewed row, random and doubtful parts alike. Picking rows
  by the teacher's own scores (its margin) does not bias a fit of p(label | scores).
- ``auto``: ``reviewed`` when at least :data:`AUTO_MIN_GOLD` rows were reviewed, else ``mean`` when the rows were
sampled label-balanced (``--balance``: the prior is
  uniform by construction; the demo), else ``gold`` when there are at least
  :data:`AUTO_MIN_GOLD` gold-labelled training rows; otherwise ``content-free`` for two labels and ``mean`` for more
  (content-free inputs
  read as "neutral", which skews a 3-way set). Chosen from benchmarks/calibration_shift.py:
  gold stays within ~1 point of the best mode on every set there, content-free is the most
  robust mode without gold on binary sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from distillery.core.annotations import AUTO_MIN_GOLD, label_columns
from distillery.core.errors import UserError
from distillery.core.registry import calibration_modes
from distillery.core.reviewed import reviewed_fingerprint

if TYPE_CHECKING:
    import pandas as pd

    from distillery.annotate.chunks import ChunkStore

__all__ = [
    "AUTO_MIN_GOLD",
    "CALIBRATIONS",
    "Calibration",
    "CalibrationMode",
    "calibrate_chunks",
    "calibrated",
    "em_prior",
    "fit_calibration",
    "fit_gold_calibration",
    "resolve_mode",
]


@dataclass
class Calibration:
    """A fitted calibration: ``calibrated(raw, bias, temperature)`` gives the calibrated log-probs."""

    mode: str
    bias: np.ndarray
    temperature: float = 1.0
    prior: np.ndarray | None = None  # the label prior EM estimated (the +em and +gmm modes)
    weights: np.ndarray | None = None  # +gmm: (labels, labels - 1) weights on the log-odds against label 0
    extra: dict = field(default_factory=dict)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated natural-log probabilities ``(rows, labels)`` of raw ones."""
        if self.weights is None:
            return calibrated(raw, self.bias, self.temperature)
        logits = (raw[:, 1:] - raw[:, :1]) @ self.weights.T - self.bias
        return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)

    def record(self, labels: list[str]) -> dict:
        """What the manifest keeps: mode, bias per label, and temperature/prior where fitted."""
        out = {"mode": self.mode, "bias": dict(zip(labels, map(float, self.bias))), **self.extra}
        if self.temperature != 1.0 or self.mode in ("gold", "reviewed"):
            out["temperature"] = float(self.temperature)
        if self.prior is not None:
            out["prior"] = dict(zip(labels, map(float, self.prior)))
        if self.weights is not None:
            out["weights"] = self.weights.tolist()
        return out


def calibrated(raw: np.ndarray, bias: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Subtract a per-label log-prior, divide by a temperature, renormalise over the labels (natural log)."""
    shifted = (raw - bias) / temperature
    return shifted - np.logaddexp.reduce(shifted, axis=1, keepdims=True)


def em_prior(logprobs: np.ndarray, max_iter: int = 1000, tol: float = 1e-8) -> np.ndarray:
    """The label prior of a set of rows, by EM on posteriors computed under a uniform prior.

    Saerens et al. 2002: with posteriors ``p_i`` made for prior ``π0`` (here uniform), repeat
    ``π ← mean_i normalise(p_i · π / π0)`` until it stops moving. ``logprobs``: ``(rows,
    labels)`` natural-log posteriors. Returns the prior (sums to 1).
    """
    logp = np.asarray(logprobs, dtype=np.float64)
    prior = np.full(logp.shape[1], 1.0 / logp.shape[1])
    for _ in range(max_iter):
        post = calibrated(logp, -np.log(prior))  # log p_i + log π, renormalised
        new = np.exp(post).mean(axis=0)
        if np.abs(new - prior).max() < tol:
            return new
        prior = new
    return prior


def fit_gold_calibration(raw: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit a per-label bias and one temperature to gold labels by maximum likelihood.

    ``raw``: (rows, labels) raw label log-probs; ``gold``: the label index of each row.
    Returns ``(bias, temperature)`` for :func:`calibrated` (bias of the first label fixed at 0:
    only differences between labels matter).
    """
    import torch

    x = torch.tensor(raw, dtype=torch.float64)
    y = torch.tensor(gold, dtype=torch.long)
    free_bias = torch.zeros(raw.shape[1] - 1, dtype=torch.float64, requires_grad=True)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([free_bias, log_t], max_iter=200, line_search_fn="strong_wolfe")

    def nll():
        optimizer.zero_grad()
        bias = torch.cat([torch.zeros(1, dtype=torch.float64), free_bias])
        loss = torch.nn.functional.cross_entropy((x - bias) / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(nll)
    bias = np.concatenate([[0.0], free_bias.detach().numpy()])
    return bias, float(log_t.detach().exp())


def fit_gmm(raw: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A shared-covariance Gaussian mixture over the log-odds ``raw[:, k] - raw[:, 0]``.

    Component k is label k: EM starts from the means and shares of the rows ``start``
    (calibrated log-probs of a first correction) labels k. Returns ``(weights, bias, prior)`` such that
    ``log p(k | x) = x·weights[k] - bias[k]`` up to normalisation (linear discriminant form).
    """
    from sklearn.mixture import GaussianMixture

    x = raw[:, 1:] - raw[:, :1]
    resp = np.eye(raw.shape[1])[start.argmax(axis=1)]  # the start's hard labels (measured: better than its soft ones)
    empty = resp.sum(axis=0) == 0
    resp[:, empty] = np.exp(start[:, empty])  # a label the start never predicts keeps its soft share
    means = (resp.T @ x) / resp.sum(axis=0)[:, None]
    gmm = GaussianMixture(
        raw.shape[1],
        covariance_type="tied",
        means_init=means,
        weights_init=resp.mean(axis=0),
        reg_covar=1e-3,
        tol=1e-6,
        max_iter=1000,
        random_state=0,
    ).fit(x)
    precision = np.linalg.inv(gmm.covariances_)
    weights = gmm.means_ @ precision
    bias = 0.5 * np.einsum("kd,kd->k", weights, gmm.means_) - np.log(gmm.weights_)
    return weights, bias, gmm.weights_


def resolve_mode(mode: str, n_gold: int, n_labels: int = 2, balanced: bool = False, n_reviewed: int = 0) -> str:
    """``auto`` -> ``reviewed`` with at least AUTO_MIN_GOLD human labels from ``distillery review``,
    else ``mean`` for a label-balanced sample, else ``gold`` with at least AUTO_MIN_GOLD gold
    training rows, else ``content-free`` (two labels) or ``mean`` (more)."""
    if mode != "auto":
        return mode
    if n_reviewed >= AUTO_MIN_GOLD:  # a person labelled rows of this run: the best evidence there is
        return "reviewed"
    if balanced:  # sampled with --balance: the label prior is uniform by construction, mean's assumption
        return "mean"
    if n_gold >= AUTO_MIN_GOLD:
        return "gold"
    return "content-free" if n_labels == 2 else "mean"


def fit_calibration(
    mode: str,
    raw: np.ndarray,
    content_free: np.ndarray | None = None,
    gold_raw: np.ndarray | None = None,
    gold: np.ndarray | None = None,
) -> Calibration:
    """Fit a registered calibration mode (not ``auto``: see :func:`resolve_mode`).

    Args:
        mode: a name in ``calibration_modes`` (also ``content-free+em``, measured, not offered).
        raw: ``(rows, labels)`` raw log-probs of every row to be calibrated.
        content_free: ``(labels,)`` mean raw log-probs on content-free inputs (modes that need them).
        gold_raw, gold: raw log-probs and gold label ids of the rows a gold mode is fitted on.
    """
    entry = MEASURED_ONLY.get(mode) or calibration_modes.get(mode)
    if entry.needs_content_free and content_free is None:
        raise UserError(f"{mode} calibration: expected the teacher's log-probs on content-free inputs; found none")
    return entry.fit(np.asarray(raw, dtype=np.float64), content_free, gold_raw, gold)


def _fit_builtin(mode: str, raw: np.ndarray, content_free, gold_raw, gold) -> Calibration:
    """The built-in modes: a bias (none, mean, content-free or gold), then +em or +gmm where named."""
    n_labels = raw.shape[1]
    base = mode.removesuffix("+em").removesuffix("+gmm")
    if base == "none":
        bias = np.zeros(n_labels)
    elif base == "mean":
        bias = raw.mean(axis=0) if len(raw) else np.zeros(n_labels)
    elif base == "content-free":
        bias = np.asarray(content_free, dtype=np.float64)
    else:  # gold, reviewed
        if gold is None or len(gold) < n_labels:
            found = 0 if gold is None else len(gold)
            if base == "reviewed":
                raise UserError(
                    f"--calibrate reviewed: expected human labels on at least {n_labels} annotated rows; "
                    f"found {found}; "
                    "run 'distillery review' and import the answers (--import), or use --calibrate auto"
                )
            raise UserError(
                f"--calibrate gold: expected gold labels on at least {n_labels} non-test rows; found {found}; "
                "pass --label-column, or use --calibrate mean+em"
            )
        bias, temperature = fit_gold_calibration(gold_raw, gold)
        return Calibration(mode, bias, temperature, extra={"fitted_on": int(len(gold))})
    if mode.endswith("+gmm") and len(raw) > n_labels:
        weights, gmm_bias, prior = fit_gmm(raw, calibrated(raw, bias))
        return Calibration(mode, gmm_bias, prior=prior, weights=weights)
    if not mode.endswith("+em"):
        return Calibration(mode, bias)
    prior = em_prior(calibrated(raw, bias)) if len(raw) else np.full(n_labels, 1.0 / n_labels)
    return Calibration(mode, bias - np.log(prior), prior=prior)


@dataclass(frozen=True)
class CalibrationMode:
    """One calibration mode, registered in ``calibration_modes`` (``distillery.core.registry``).

    Args:
        summary: one line for --help.
        fit: ``(raw, content_free, gold_raw, gold) -> Calibration``; ``raw`` are the raw log-probs
            of every row, ``content_free`` the mean raw log-probs on content-free inputs (or None),
            ``gold_raw``/``gold`` the rows with gold labels (or None).
        needs_content_free: annotate scores the task's content-free inputs first.
        needs_gold: fitted on labelled rows (annotate passes them; online distillation cannot).
        needs_review: fitted on the human labels of ``distillery review`` rather than a gold column.
        fits_on_rows: uses the raw log-probs of the rows themselves (online distillation scores a
            sample of the rows before training for it).
    """

    summary: str
    fit: Callable[..., Calibration]
    needs_content_free: bool = False
    needs_gold: bool = False
    needs_review: bool = False
    fits_on_rows: bool = True


BUILTIN_MODES = [
    ("none", "no change"),
    ("mean", "subtract each label's mean log-prob (assumes balanced labels)"),
    ("content-free", "subtract the log-probs of content-free inputs (Zhao et al. 2021)"),
    ("mean+em", "mean, then the label prior by EM"),
    ("mean+gmm", "mean, then a Gaussian mixture over the log-odds"),
    ("content-free+gmm", "content-free, then a Gaussian mixture over the log-odds"),
    ("gold", "a bias and a temperature fitted on --calibrate-on gold rows"),
    ("reviewed", "as gold, on the human labels imported by 'distillery review'"),
]
for _name, _summary in BUILTIN_MODES:
    calibration_modes.register(
        _name,
        CalibrationMode(
            _summary,
            partial(_fit_builtin, _name),
            needs_content_free=_name.startswith("content-free"),
            needs_gold=_name in ("gold", "reviewed"),
            needs_review=_name == "reviewed",
            fits_on_rows=_name not in ("none", "content-free", "gold", "reviewed"),
        ),
    )
# Measured in benchmarks/calibration_shift.py but not offered (on top of content-free, EM collapses onto one label).
MEASURED_ONLY = {
    "content-free+em": CalibrationMode("", partial(_fit_builtin, "content-free+em"), needs_content_free=True)
}
CALIBRATIONS = ("auto", *(name for name, _ in BUILTIN_MODES))  # auto picks one of the others (resolve_mode)


def calibrate_chunks(
    store: ChunkStore,
    labels: list[str],
    mode: str,
    bias_content_free: list[float] | None,
    calibrate_on: int = 200,
    requested: str | None = None,
    reviewed: dict[str, str] | None = None,
) -> dict:
    """annotate's last step: fit the calibration on the chunks of ``store``, apply it to every chunk and mark
    the run complete. Returns the calibration record.

    ``mode`` is a resolved mode (not ``auto``: the caller resolves it with
    :func:`resolve_mode`, which knows how the rows were sampled); the
    modes are described above. ``gold`` fits on the first
    ``calibrate_on`` non-test rows with a gold label; ``reviewed`` on every row with a human
    label in ``reviewed`` (``{id: label}``, from ``OUT/review/gold.csv``). ``requested`` is what
    the user asked for (e.g. ``auto``), kept in the record.
    """
    import pandas as pd

    store.manifest["status"] = "calibrating"  # not complete while chunks are rewritten: a kill here is not read as done
    store.save_manifest()
    frames = store.read_all()
    raw_cols, cal_cols = label_columns(labels, raw=True), label_columns(labels)

    def soft(f: pd.DataFrame) -> pd.Series:  # rows with soft labels; hard-label-only rows keep theirs
        return (f["error_type"] == "") & f[raw_cols].notna().all(axis=1)

    ok = (
        pd.concat([f[soft(f)] for f in frames.values()])
        if frames
        else pd.DataFrame(columns=[*raw_cols, "gold", "split"])
    )
    entry = calibration_modes.get(mode)
    if entry.needs_review:
        human = ok["id"].map(reviewed or {})
        fit_rows = ok[human.isin(labels)].assign(gold=human[human.isin(labels)].to_numpy())
    else:
        fit_rows = ok[ok["gold"].isin(labels) & (ok["split"] != "test")].head(calibrate_on)
    calibration = fit_calibration(
        mode,
        ok[raw_cols].to_numpy(float),
        bias_content_free,
        fit_rows[raw_cols].to_numpy(float),
        fit_rows["gold"].map(labels.index).to_numpy(),
    )
    if entry.needs_review:
        calibration.extra["reviewed"] = reviewed_fingerprint(reviewed or {})  # annotate refits when the labels change
    elif entry.needs_gold:
        calibration.extra["calibrate_on"] = calibrate_on
    for frame in frames.values():
        good = soft(frame)
        if good.any():
            cal = calibration.apply(frame.loc[good, raw_cols].to_numpy(float))
            frame.loc[good, cal_cols] = cal
            frame.loc[good, "teacher_label"] = [labels[i] for i in cal.argmax(axis=1)]
    store.rewrite(frames)
    n_rows = sum(len(f) for f in frames.values())
    n_err = sum(int((f["error_type"] != "").sum()) for f in frames.values())
    record = {**calibration.record(labels), "requested": requested or mode}
    mass = ok["label_mass"].dropna() if "label_mass" in ok else pd.Series(dtype=float)
    store.manifest.update(
        status="complete",
        calibration=record,
        rows=n_rows,
        rows_failed=n_err,
        label_mass_median=float(mass.median()) if len(mass) else None,
    )
    store.save_manifest()
    return record
