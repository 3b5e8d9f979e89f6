"""LinBreg and AdaBreg: reductions to SGD and Adam, the initialisation, sparsity, regrowth."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_problems import assert_same_params, convnet, data, mlp, train, twin

from sparsebench.optim import AdaBreg, LinBreg, param_groups, sparse_init
from sparsebench.optim.prox import bregman_prox


@pytest.mark.parametrize("reg", ["l1", "none"])
def test_linbreg_with_lam_zero_is_sgd_bit_for_bit(reg):
    model = mlp()
    reference = twin(model)
    opt = LinBreg(model.parameters(), lr=0.1, lam=0.0, reg=reg)
    train(model, opt, 15, data())
    train(reference, torch.optim.SGD(reference.parameters(), lr=0.1), 15, data())
    assert_same_params(model, reference)  # torch.equal: zero tolerance
    assert all("v" not in state for state in opt.state.values())  # v = theta, not stored


def test_linbreg_with_lam_zero_and_delta_is_sgd_with_lr_times_delta():
    model = mlp()
    reference = twin(model)
    train(model, LinBreg(model.parameters(), lr=0.05, lam=0.0, delta=2.0), 10, data())
    train(reference, torch.optim.SGD(reference.parameters(), lr=0.1), 10, data())
    assert_same_params(model, reference)  # 0.05 * 2.0 == 0.1 exactly


@pytest.mark.parametrize("fused", [False, True])
def test_adabreg_with_lam_zero_and_delta_one_is_adam_bit_for_bit(fused):
    model = mlp()
    reference = twin(model)
    train(model, AdaBreg(model.parameters(), lr=0.01, lam=0.0, fused=fused), 15, data())
    adam = torch.optim.Adam(reference.parameters(), lr=0.01, fused=fused)
    train(reference, adam, 15, data())
    assert_same_params(model, reference)  # torch.equal against the same Adam path


def test_adabreg_with_lam_zero_is_adam_foreach_up_to_rounding():
    model = mlp()
    reference = twin(model)
    train(model, AdaBreg(model.parameters(), lr=0.01, lam=0.0), 15, data())
    adam = torch.optim.Adam(reference.parameters(), lr=0.01, foreach=True)
    train(reference, adam, 15, data())
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_adabreg_fused_fast_path_matches_the_single_tensor_path_after_50_steps():
    model = convnet()
    reference = twin(model)

    def groups(m):
        return param_groups(m, lam=0.1, reg_conv="l12_kernel")

    fast = AdaBreg(groups(model), lr=0.01, fused=True)
    simple = AdaBreg(groups(reference), lr=0.01, fused=False)
    train(model, fast, 50, data())
    train(reference, simple, 50, data())
    # the fused kernel rounds differently (a few ulp after 50 steps): same up to 1e-5
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert torch.equal(p == 0, q == 0)  # the same sparsity pattern
        assert fast.state[p].keys() == simple.state[q].keys()
        for key in fast.state[p]:
            torch.testing.assert_close(
                fast.state[p][key], simple.state[q][key], rtol=1e-5, atol=1e-6
            )


def test_adabreg_state_dict_moves_between_fused_and_single_tensor_paths():
    model = mlp()
    reference = twin(model)
    fast = AdaBreg(param_groups(model, lam=0.05), lr=0.01, fused=True)
    train(model, fast, 5, data())
    simple = AdaBreg(param_groups(reference, lam=0.05), lr=0.01, fused=False)
    reference.load_state_dict(model.state_dict())
    simple.load_state_dict(copy.deepcopy(fast.state_dict()))  # torch would share tensors
    assert all(g["fused"] for g in simple.param_groups)  # the saved groups carry the flag
    for group in simple.param_groups:
        group["fused"] = False  # continue on the single-tensor path
    train(model, fast, 5, data())
    train(reference, simple, 5, data())
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_adabreg_with_a_regulariser_moves_v_by_the_adam_step(fused):
    torch.manual_seed(0)
    theta0 = torch.randn(30, 20)
    p, q = torch.nn.Parameter(theta0.clone()), torch.nn.Parameter(theta0.clone())
    opt = AdaBreg([p], lr=0.01, lam=0.05, fused=fused)
    adam = torch.optim.Adam([q], lr=0.01, fused=fused)
    v0 = theta0 + 0.05 * torch.sign(theta0)
    for _ in range(3):
        grad = torch.randn(30, 20)
        p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        adam.step()
    # v moves by Adam's step; v0 and the moves are rounded at |v|, hence the tolerance
    torch.testing.assert_close(opt.state[p]["v"] - v0, q.detach() - theta0, rtol=0, atol=1e-6)
    assert torch.equal(p, bregman_prox(opt.state[p]["v"], 0.05, 1.0, "l1"))


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_linbreg_first_prox_returns_dyadic_initial_weights_exactly(delta):
    torch.manual_seed(0)
    # multiples of 2^-8 in [-2, 2], lam = 0.5: theta/delta + lam and back are exact
    theta = torch.randint(-512, 513, (64, 32)).float() / 256
    theta[:, :4] = 0.0
    p = torch.nn.Parameter(theta.clone())
    opt = LinBreg([p], lr=0.1, lam=0.5, delta=delta)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(p, theta)


@pytest.mark.parametrize("delta", [0.3, 1.0, 2.0])
def test_linbreg_first_prox_returns_random_initial_weights_up_to_one_rounding(delta):
    # in float32, v0 = theta/delta + lam*sign(theta) rounds theta to the precision of
    # |theta|/delta + lam: the first prox is exact only up to that single rounding
    torch.manual_seed(0)
    theta = torch.randn(200, 100) * 0.05
    theta[theta.abs() < 0.01] = 0.0
    lam = 0.5
    p = torch.nn.Parameter(theta.clone())
    opt = LinBreg([p], lr=0.1, lam=lam, delta=delta)
    p.grad = torch.zeros_like(p)
    opt.step()
    ulp = torch.finfo(torch.float32).eps * (theta.abs() / delta + lam) * delta
    assert ((p - theta).abs() <= 2 * ulp).all()
    assert torch.equal(p == 0, theta == 0)  # the zero pattern is exact


@pytest.mark.parametrize("reg", ["l12_row", "l12_kernel"])
def test_linbreg_first_prox_returns_the_initial_weights_for_group_regs(reg):
    model = convnet()
    model[0].weight.data[0] = 0.0  # a zero filter: its groups stay zero
    start = [p.detach().clone() for p in model.parameters()]
    opt = LinBreg(param_groups(model, lam=0.5, reg_linear="l12_row", reg_conv=reg), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, p0 in zip(model.parameters(), start, strict=True):
        torch.testing.assert_close(p, p0, rtol=1e-6, atol=1e-7)
        assert torch.equal(p == 0, p0 == 0)


@pytest.mark.parametrize("cls", [LinBreg, AdaBreg])
def test_bregman_prox_zeros_are_exact_zeros_where_v_is_in_the_lam_ball(cls):
    model = mlp()
    opt = cls(model.parameters(), lr=0.05, lam=0.3)
    train(model, opt, 10, data())
    zeros = 0
    for p in model.parameters():
        v = opt.state[p]["v"]
        inside = v.abs() <= 0.3
        assert (p[inside] == 0).all()  # exact zeros, not tiny numbers
        assert (p[~inside] != 0).all()
        zeros += int(inside.sum())
    assert 0 < zeros < sum(p.numel() for p in model.parameters())


def test_linbreg_from_a_sparse_init_grows_weights():
    model = mlp()
    sparse_init(model, 0.1, generator=torch.Generator().manual_seed(0))
    weights = [model[1].weight, model[3].weight]
    start = sum(int(w.count_nonzero()) for w in weights)
    opt = LinBreg(param_groups(model, lam=0.2), lr=0.1)
    train(model, opt, 40, data())
    assert sum(int(w.count_nonzero()) for w in weights) > 2 * start


@pytest.mark.parametrize("fused", [False, True])
def test_linbreg_momentum_follows_its_update_rule(fused):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.0]))
    lr, lam, beta = 0.1, 0.5, 0.9
    opt = LinBreg([p], lr=lr, lam=lam, momentum=beta, fused=fused)
    v = torch.tensor([1.5, -2.5, 0.0])
    m = torch.zeros(3)
    for g in ([1.0, 1.0, 1.0], [2.0, -1.0, -8.0]):
        grad = torch.tensor(g)
        p.grad = grad.clone()
        opt.step()
        m = beta * m + (1 - beta) * lr * grad
        v = v - m
        torch.testing.assert_close(opt.state[p]["v"], v)
        torch.testing.assert_close(p.detach(), torch.sign(v) * (v.abs() - lam).clamp(min=0))


@pytest.mark.parametrize("cls", [LinBreg, AdaBreg])
def test_lam_change_from_zero_initialises_v_from_the_current_weights(cls):
    model = mlp()
    opt = cls(model.parameters(), lr=0.01, lam=0.0)
    train(model, opt, 3, data())
    assert all("v" not in state for state in opt.state.values())
    for group in opt.param_groups:
        group["lam"] = 0.1
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, p0 in zip(model.parameters(), before, strict=True):
        assert "v" in opt.state[p]
        if cls is LinBreg:  # zero gradient: the first prox again
            torch.testing.assert_close(p, p0, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_linbreg_fused_momentum_matches_the_single_tensor_path_under_a_schedule(lam):
    model = convnet()
    reference = twin(model)

    def build(m, fused):
        groups = param_groups(m, lam=lam, reg_conv="l12_kernel", delta=1.5)
        opt = LinBreg(groups, lr=0.1, momentum=0.9, fused=fused)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.3)

    fast, fast_sched = build(model, True)
    simple, simple_sched = build(reference, False)
    train(model, fast, 40, data(), lambda _: fast_sched.step())
    train(reference, simple, 40, data(), lambda _: simple_sched.step())
    # the fused kernel rounds differently (a few ulp after 40 steps): same up to 1e-5
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert torch.equal(p == 0, q == 0)  # the same sparsity pattern
        assert fast.state[p].keys() == simple.state[q].keys()
        for key in fast.state[p]:
            torch.testing.assert_close(
                fast.state[p][key], simple.state[q][key], rtol=1e-5, atol=1e-6
            )
