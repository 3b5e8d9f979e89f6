"""ProxSGD: reduction to SGD, the prox after the step, exact zeros."""

from __future__ import annotations

import pytest
import torch
from optim_problems import assert_same_params, convnet, data, mlp, train, twin

from sparsebench.optim import ProxSGD, param_groups
from sparsebench.optim.prox import group_soft_threshold, group_weight


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_proxsgd_with_lam_zero_is_sgd_bit_for_bit(momentum):
    model = mlp()
    reference = twin(model)
    train(model, ProxSGD(model.parameters(), lr=0.1, lam=0.0, momentum=momentum), 15, data())
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=momentum)
    train(reference, sgd, 15, data())
    assert_same_params(model, reference)  # torch.equal: zero tolerance


def test_proxsgd_step_is_the_sgd_step_then_the_l1_prox():
    p = torch.nn.Parameter(torch.tensor([1.0, -0.02, 0.5, 0.03]))
    opt = ProxSGD([p], lr=0.1, lam=0.5)
    p.grad = torch.tensor([0.0, 0.0, 5.0, -1.0])
    opt.step()
    # after the step: [1.0, -0.02, 0.0, 0.13]; threshold lr * lam = 0.05
    torch.testing.assert_close(p.detach(), torch.tensor([0.95, 0.0, 0.0, 0.08]))
    assert p[1].item() == 0.0 and p[2].item() == 0.0


def test_proxsgd_group_prox_shrinks_conv_kernels_by_lr_lam_weight():
    model = convnet()
    before = model[0].weight.detach().clone()
    opt = ProxSGD(param_groups(model, lam=0.3, reg_conv="l12_kernel"), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    t = 0.1 * 0.3 * group_weight("l12_kernel", before.shape)
    assert torch.equal(model[0].weight, group_soft_threshold(before, t, "l12_kernel"))


def test_proxsgd_zeros_are_exact_zeros():
    model = mlp()
    train(model, ProxSGD(param_groups(model, lam=0.5), lr=0.1), 10, data())
    weight = model[1].weight
    assert int((weight == 0).sum()) > weight.numel() // 4
    assert weight[weight.abs() < 1e-6].eq(0).all()  # no tiny leftovers
