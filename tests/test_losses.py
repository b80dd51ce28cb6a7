"""Closed-form identities of the hybrid KD loss."""

import pytest
import torch
import torch.nn.functional as F

from distillery.distill.losses import hybrid_kd_loss


def _batch(seed=0, n=6, c=3):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, c, generator=g, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(n, c, generator=g), dim=-1)
    labels = torch.randint(0, c, (n,), generator=g)
    return student, teacher, labels


def test_identical_distributions_give_zero_kd():
    student, teacher, labels = _batch()
    loss = hybrid_kd_loss(teacher.clone().requires_grad_(), teacher, labels, alpha=1.0, temperature=2.0)
    assert loss.kd.item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_zero_is_plain_cross_entropy():
    student, teacher, labels = _batch()
    loss = hybrid_kd_loss(student, teacher, labels, alpha=0.0)
    assert loss.total.item() == pytest.approx(F.cross_entropy(student, labels).item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_is_t_squared_times_kl_at_temperature(temperature):
    student, teacher, labels = _batch(seed=1)
    loss = hybrid_kd_loss(student, teacher, labels, alpha=1.0, temperature=temperature)
    kl = F.kl_div(
        F.log_softmax(student / temperature, -1),
        F.log_softmax(teacher / temperature, -1),
        log_target=True,
        reduction="batchmean",
    )
    assert loss.kd.item() == pytest.approx(temperature**2 * kl.item(), rel=1e-5)
    assert loss.total.item() == pytest.approx(loss.kd.item(), rel=1e-6)


def test_total_is_the_alpha_mix():
    student, teacher, labels = _batch(seed=2)
    loss = hybrid_kd_loss(student, teacher, labels, alpha=0.3, temperature=2.0)
    assert loss.total.item() == pytest.approx(0.3 * loss.kd.item() + 0.7 * loss.ce.item(), rel=1e-6)


def test_masked_rows_get_no_gradient_and_no_nan():
    student, teacher, labels = _batch(seed=3)
    teacher = teacher.clone()
    teacher[0] = float("nan")  # no soft label for row 0
    labels = labels.clone()
    labels[0] = -100  # and no hard label either
    loss = hybrid_kd_loss(student, teacher, labels, alpha=0.5)
    loss.total.backward()
    assert torch.isfinite(loss.total)
    assert torch.all(student.grad[0] == 0)
    assert student.grad[1:].abs().sum() > 0


def test_nothing_to_average_gives_zero_not_nan():
    student, teacher, _ = _batch()
    loss = hybrid_kd_loss(student, torch.full_like(teacher, float("nan")), torch.full((6,), -100), alpha=0.5)
    assert loss.total.item() == 0.0 and loss.kd.item() == 0.0 and loss.ce.item() == 0.0


def test_teacher_gets_no_gradient():
    """The teacher's log-probs are a target: passed without detach() (an online teacher that forgot
    no_grad), the KD part still moves only the student."""
    student, teacher, labels = _batch()
    teacher = teacher.clone().requires_grad_()
    hybrid_kd_loss(student, teacher, labels, alpha=1.0).total.backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("alpha,temperature", [(-0.1, 2.0), (1.5, 2.0), (0.5, 0.0)])
def test_bad_hyperparameters_are_rejected(alpha, temperature):
    student, teacher, labels = _batch()
    with pytest.raises(ValueError, match="alpha|temperature"):
        hybrid_kd_loss(student, teacher, labels, alpha=alpha, temperature=temperature)


def test_class_weights_make_each_part_a_weighted_mean():
    torch.manual_seed(0)
    logits, teacher = torch.randn(6, 2), torch.log_softmax(torch.randn(6, 2), -1)
    labels = torch.tensor([0, 0, 0, 0, 1, -100])  # the last row: no hard label, weighted by the teacher's top label
    weights = torch.tensor([0.5, 2.0])
    got = hybrid_kd_loss(logits, teacher, labels, 0.5, 2.0, weights)
    ce_rows = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")[:5]
    w_hard = weights[labels[:5]]
    assert torch.allclose(got.ce, (ce_rows * w_hard).sum() / w_hard.sum())
    t, s = torch.log_softmax(teacher / 2, -1), torch.log_softmax(logits / 2, -1)
    kl = (t.exp() * (t - s)).sum(-1)
    w_soft = weights[torch.cat([labels[:5], teacher[5:].argmax(-1)])]
    assert torch.allclose(got.kd, (kl * w_soft).sum() / w_soft.sum() * 4)
    assert torch.allclose(
        hybrid_kd_loss(logits, teacher, labels, 0.5, 2.0, torch.ones(2)).total,
        hybrid_kd_loss(logits, teacher, labels).total,
    )


def test_class_weights_come_from_the_training_rows_label_shares():
    import pandas as pd

    from distillery.distill.data import TrainingRows
    from distillery.distill.losses import class_weights

    def rows(n_neg, n_pos):
        return TrainingRows(
            ["negative", "positive"], pd.DataFrame({"hard": [0] * n_neg + [1] * n_pos}), pd.DataFrame(), 0
        )

    assert torch.allclose(class_weights("balanced", rows(25, 75)), torch.tensor([2.0, 2 / 3]))
    assert torch.allclose(class_weights("auto", rows(25, 75)), torch.tensor([2.0, 2 / 3]))
    assert class_weights("auto", rows(40, 60)) is None and class_weights("none", rows(25, 75)) is None
    assert class_weights("auto", rows(150, 850)) is None  # 150 rows of the small class: enough to learn it unweighted
    assert class_weights("balanced", rows(150, 850)) is not None
    assert class_weights("balanced", rows(1, 999))[0] == 10.0  # capped


def test_the_row_losses_average_to_the_hybrid_loss():
    from distillery.distill.losses import hybrid_kd_loss, hybrid_kd_rows

    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(32, 3, generator=gen), torch.log_softmax(torch.randn(32, 3, generator=gen), -1)
    labels = torch.randint(0, 3, (32,), generator=gen)
    rows = hybrid_kd_rows(student, teacher, labels, 0.5, 2.0)
    assert rows.shape == (32,) and torch.allclose(rows.mean(), hybrid_kd_loss(student, teacher, labels, 0.5, 2.0).total)


def test_gce_is_one_minus_p_to_the_q_over_q():
    student, teacher, labels = _batch(seed=3)
    p_label = torch.softmax(student, -1).gather(1, labels[:, None]).squeeze(1)
    loss = hybrid_kd_loss(student, teacher, labels, alpha=0.0, hard_loss="gce")
    assert loss.ce.item() == pytest.approx(((1 - p_label**0.7) / 0.7).mean().item(), rel=1e-5)
    # a label the student finds unlikely pulls less on it than under cross-entropy (its noise robustness)
    gce_grad = torch.autograd.grad(loss.total, student)[0].abs().sum(-1)
    ce_grad = torch.autograd.grad(hybrid_kd_loss(student, teacher, labels, alpha=0.0).total, student)[0].abs().sum(-1)
    unlikely = p_label.argmin()
    assert gce_grad[unlikely] < ce_grad[unlikely]


def test_confident_weighs_each_teacher_label_by_the_teachers_margin_over_chance():
    student = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.5]], requires_grad=True)
    teacher = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]))
    labels = torch.tensor([0, 0, 0])  # rows 0 and 1: the teacher's own label; row 2: a person's, against it
    loss = hybrid_kd_loss(student, teacher, labels, alpha=0.0, hard_loss="confident")
    ce = F.cross_entropy(student, labels, reduction="none")
    weights = torch.tensor([0.8, 0.0, 1.0])  # (2 x 0.9 - 1) / 1, chance, a label the teacher did not give
    assert loss.ce.item() == pytest.approx(((ce * weights).sum() / weights.sum()).item(), rel=1e-6)
    assert loss.ce.item() != pytest.approx(ce.mean().item(), rel=1e-3)
    with pytest.raises(ValueError, match="hard_loss"):
        hybrid_kd_loss(student, teacher, labels, hard_loss="focal")
