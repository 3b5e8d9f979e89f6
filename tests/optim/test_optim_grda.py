"""gRDA: reduction to SGD, the threshold schedule, regrowth."""

from __future__ import annotations

import pytest
import torch
from optim_problems import assert_same_params, data, mlp, train, twin

from sparsebench.optim import GRDA, soft_threshold


def test_grda_with_c_zero_is_sgd_bit_for_bit():
    model = mlp()
    reference = twin(model)
    train(model, GRDA(model.parameters(), lr=0.1, c=0.0, mu=0.51), 15, data())
    train(reference, torch.optim.SGD(reference.parameters(), lr=0.1), 15, data())
    assert_same_params(model, reference)  # torch.equal: zero tolerance


def test_grda_threshold_after_n_steps_is_c_sqrt_lr_times_n_lr_to_the_mu():
    lr, c, mu, n = 0.05, 0.02, 0.55, 30
    model = mlp()
    opt = GRDA(model.parameters(), lr=lr, c=c, mu=mu)
    train(model, opt, n, data())
    for p in model.parameters():
        state = opt.state[p]
        assert state["step"] == n
        assert state["l1"] == pytest.approx(c * lr**0.5 * (n * lr) ** mu, rel=1e-12)


def test_grda_weights_are_the_soft_threshold_of_the_accumulator():
    model = mlp()
    opt = GRDA(model.parameters(), lr=0.1, c=0.05, mu=0.51)
    train(model, opt, 10, data())
    for p in model.parameters():
        state = opt.state[p]
        assert torch.equal(p, soft_threshold(state["accumulator"], state["l1"]))


def test_grda_threshold_follows_the_increment_form_under_a_scheduler():
    c, mu, steps = 0.02, 0.6, 12
    model = mlp()
    opt = GRDA(model.parameters(), lr=0.1, c=c, mu=mu)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    used: list[float] = []

    def record_and_schedule(_: int) -> None:
        used.append(opt.param_groups[0]["lr"])
        sched.step()

    train(model, opt, steps, data(), after_step=record_and_schedule)
    expected = sum(
        c * lr ** (mu + 0.5) * (k**mu - (k - 1) ** mu) for k, lr in enumerate(used, start=1)
    )
    assert used[0] == 0.1 and used[-1] == 0.025
    l1 = opt.state[model[1].weight]["l1"]
    assert l1 == pytest.approx(expected, rel=1e-12)
    # the closed form at the final lr would be a different (wrong) threshold
    assert l1 != pytest.approx(c * used[-1] ** 0.5 * (steps * used[-1]) ** mu, rel=1e-3)


def test_grda_zero_weight_regrows_when_the_accumulator_crosses_the_threshold():
    lr, c, mu = 0.1, 1.0, 0.5  # threshold l1_n = c * lr^(mu + 1/2) * n^mu = 0.1 * sqrt(n)
    w = torch.nn.Parameter(torch.tensor([0.05]))
    with pytest.warns(UserWarning, match="mu = 0.5 is at most 0.5"):  # allowed, outside (0.5, 1)
        opt = GRDA([w], lr=lr, c=c, mu=mu)
    history = []
    for grad in [0.0] + [-0.4] * 6:  # a_n = 0.05 + 0.04 (n - 1)
        w.grad = torch.tensor([grad])
        opt.step()
        a, l1 = opt.state[w]["accumulator"].item(), opt.state[w]["l1"]
        history.append((a, l1, w.item()))
    a1, l1_1, w1 = history[0]
    assert a1 == pytest.approx(0.05) and l1_1 == pytest.approx(0.1) and w1 == 0.0  # pruned
    for a, l1, w_now in history:
        assert (w_now != 0.0) == (abs(a) > l1)
    assert [w_now != 0 for _, _, w_now in history] == [False] * 5 + [True] * 2
    assert history[-1][2] == pytest.approx(0.29 - 0.1 * 7**0.5, rel=1e-5)  # regrown


def test_grda_prox_zeros_are_exact_zeros():
    model = mlp()
    opt = GRDA(model.parameters(), lr=0.1, c=0.5, mu=0.51)
    train(model, opt, 5, data())
    for p in model.parameters():
        a, l1 = opt.state[p]["accumulator"], opt.state[p]["l1"]
        inside = a.abs() <= l1
        assert inside.any()
        assert (p[inside] == 0).all()
        assert (p[~inside] != 0).all()
