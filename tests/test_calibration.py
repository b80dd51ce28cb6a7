"""Calibration on synthetic data with a known label prior: EM and the mixture find it, mean cannot, auto picks by gold
rows."""

import numpy as np
import pytest
from conftest import make_rows

from distillery.annotate import AnnotateConfig, annotate, read_annotations
from distillery.annotate.calibration import calibrated, em_prior, fit_calibration, resolve_mode


def _synthetic(prior: list[float], n: int = 20000, seed: int = 0):
    """Rows whose gold label is drawn from ``prior``; each label's log-likelihood is a unit
    Gaussian around its mean, so ``loglik`` are exact posteriors under a uniform prior."""
    rng = np.random.default_rng(seed)
    gold = rng.choice(len(prior), size=n, p=prior)
    means = np.linspace(-1.0, 1.0, len(prior))
    x = rng.normal(means[gold], 1.0)
    loglik = -0.5 * (x[:, None] - means[None, :]) ** 2
    return calibrated(loglik, np.zeros(len(prior))), gold


def test_em_recovers_a_known_prior():
    for prior in ([0.8, 0.2], [0.2, 0.8], [0.5, 0.3, 0.2]):
        posteriors, _ = _synthetic(prior)
        assert np.allclose(em_prior(posteriors), prior, atol=0.03), prior


def test_em_on_top_of_content_free_keeps_an_imbalanced_prior_that_mean_removes():
    posteriors, gold = _synthetic([0.8, 0.2])
    teacher_bias = np.array([-0.3, 0.9])  # the teacher's own lean towards label 1
    raw = calibrated(posteriors + teacher_bias, np.zeros(2))
    mean = fit_calibration("mean", raw)
    cf_em = fit_calibration("content-free+em", raw, content_free=teacher_bias)
    assert np.allclose(cf_em.prior, [0.8, 0.2], atol=0.03)
    acc = {name: (c.apply(raw).argmax(1) == gold).mean() for name, c in (("mean", mean), ("cf_em", cf_em))}
    bayes = ((posteriors + np.log([0.8, 0.2])).argmax(1) == gold).mean()  # the best any rule can do here
    assert acc["cf_em"] == pytest.approx(bayes, abs=0.005)
    assert acc["cf_em"] > acc["mean"] + 0.03  # mean assumes 50/50 and loses accuracy on an 80/20 set
    # mean's own share of predictions is pushed towards 50/50; EM's follows the data.
    assert (cf_em.apply(raw).argmax(1) == 0).mean() > (mean.apply(raw).argmax(1) == 0).mean() + 0.1


def test_em_changes_little_on_balanced_data():
    posteriors, gold = _synthetic([0.5, 0.5])
    raw = calibrated(posteriors + np.array([0.0, 1.0]), np.zeros(2))
    mean, mean_em = fit_calibration("mean", raw), fit_calibration("mean+em", raw)
    assert np.allclose(mean_em.prior, [0.5, 0.5], atol=0.03)
    assert (mean_em.apply(raw).argmax(1) == mean.apply(raw).argmax(1)).mean() > 0.97


def test_gmm_finds_the_prior_and_a_temperature_without_gold():
    # Posteriors three times too soft (a temperature the teacher does not know) and a teacher
    # bias: EM on the posteriors runs away; the mixture over the log-odds finds prior and scale.
    posteriors, gold = _synthetic([0.8, 0.2], n=5000)
    teacher_bias = np.array([-0.3, 0.9])
    raw = calibrated(posteriors / 3 + teacher_bias, np.zeros(2))
    gmm = fit_calibration("content-free+gmm", raw, content_free=teacher_bias)
    assert np.allclose(gmm.prior, [0.8, 0.2], atol=0.03)
    bayes = ((posteriors + np.log([0.8, 0.2])).argmax(1) == gold).mean()
    assert (gmm.apply(raw).argmax(1) == gold).mean() == pytest.approx(bayes, abs=0.01)
    assert (fit_calibration("mean", raw).apply(raw).argmax(1) == gold).mean() < bayes - 0.03
    probs = np.exp(gmm.apply(raw))[:, 0]  # calibrated: in each confidence bin, that share is label 0
    for lo in (0.1, 0.4, 0.7):
        inside = (probs > lo) & (probs < lo + 0.2)
        assert abs((gold[inside] == 0).mean() - probs[inside].mean()) < 0.06


def test_auto_is_gold_with_enough_gold_rows_else_a_mixture():
    assert resolve_mode("auto", 50) == "gold" and resolve_mode("mean", 500) == "mean"
    assert resolve_mode("auto", 49, 2) == "content-free" and resolve_mode("auto", 0, 3) == "mean"
    assert resolve_mode("auto", 500, 2, balanced=True) == "mean"  # a --balance sample has a uniform prior


@pytest.mark.parametrize(
    "rows, balance, expected", [(40, False, "content-free"), (96, False, "gold"), (96, True, "mean")]
)
def test_auto_on_a_run(tiny_llama, tmp_path, rows, balance, expected):
    data = tmp_path / "rows.csv"
    make_rows(rows).to_csv(data, index=False)
    cfg = AnnotateConfig(
        data=str(data),
        out=str(tmp_path / "run"),
        text_column="review",
        label_column="sentiment",
        settings={"teacher": str(tiny_llama)},
        device="cpu",
        limit=0,
        test_fraction=0.25,
        balance=balance,
    )
    assert cfg.calibrate == "auto"
    _, manifest = read_annotations(annotate(cfg))
    record = manifest["calibration"]
    assert record["mode"] == expected and record["requested"] == "auto"
    assert ("temperature" in record) == (expected == "gold") and record["bias"]
    assert ("content_free_bias" in manifest) == (expected == "content-free"), (
        "content-free inputs are scored only when used"
    )
