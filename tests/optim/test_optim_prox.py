"""The prox operators: formulas on hand examples, optimality, exact zeros."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsebench.optim.prox import (
    bregman_init,
    bregman_prox,
    group_soft_threshold,
    group_weight,
    soft_threshold,
)

floats = st.floats(-10, 10, allow_nan=False, width=32)


@given(st.lists(floats, min_size=1, max_size=50), st.floats(0, 5, width=32))
def test_soft_threshold_equals_sign_times_clamp(values, t):
    x = torch.tensor(values)
    expected = torch.sign(x) * (x.abs() - t).clamp(min=0)
    assert torch.equal(soft_threshold(x, t), expected)
    assert torch.equal(soft_threshold(x.clone(), t, out=x), expected)  # in place


def test_soft_threshold_zeros_are_exact_zeros():
    x = torch.tensor([0.3, -0.3, 0.2999, 1e-30, -0.0, 0.7])
    y = soft_threshold(x, 0.3)
    assert y.tolist()[:5] == [0.0] * 5
    assert y[5].item() == pytest.approx(0.4)


def test_group_soft_threshold_matches_its_formula_on_rows():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [-6.0, 8.0]])  # norms 5, .5, 0, 10
    y = group_soft_threshold(x, 1.0, "l12_row")
    expected = torch.tensor([[2.4, 3.2], [0.0, 0.0], [0.0, 0.0], [-5.4, 7.2]])  # 1 - 1/||x||
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert (y[1:3] == 0).all()


def test_group_soft_threshold_matches_its_formula_on_conv_kernels():
    x = torch.zeros(2, 2, 2, 2)  # (out, in, kh, kw)
    x[0, 0] = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # norm 5 -> factor 1 - 2/5
    x[0, 1] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # norm 2 -> 0
    x[1, 0] = torch.tensor([[0.0, 0.0], [0.0, -8.0]])  # norm 8 -> factor 1 - 2/8
    y = group_soft_threshold(x, 2.0, "l12_kernel")
    expected = torch.zeros(2, 2, 2, 2)
    expected[0, 0] = torch.tensor([[1.8, 0.0], [0.0, 2.4]])
    expected[1, 0] = torch.tensor([[0.0, 0.0], [0.0, -6.0]])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert (y[0, 1] == 0).all() and (y[1, 1] == 0).all()


def test_group_weights_are_sqrt_fan_in_for_rows_and_sqrt_kernel_size_for_kernels():
    assert group_weight("l12_row", (300, 784)) == math.sqrt(784)
    assert group_weight("l12_kernel", (50, 20, 5, 5)) == 5.0
    assert group_weight("l12_row", (50, 20, 5, 5)) == math.sqrt(500)  # whole filters


def test_bregman_prox_of_group_reg_matches_its_formula_by_hand():
    # theta_g = delta * v_g * max(0, 1 - lam * sqrt(n_in) / ||v_g||), n_in = 2
    v = torch.tensor([[3.0, 4.0], [0.6, 0.8]])  # norms 5 and 1
    lam, delta = 1.0, 2.0
    theta = bregman_prox(v, lam, delta, "l12_row")
    factor = 1 - math.sqrt(2) / 5
    expected = torch.tensor([[6.0 * factor, 8.0 * factor], [0.0, 0.0]])
    torch.testing.assert_close(theta, expected, rtol=1e-6, atol=0)
    assert (theta[1] == 0).all()


def test_bregman_prox_of_l1_is_delta_times_soft_threshold():
    v = torch.tensor([2.0, -0.5, 0.25, -3.0])
    theta = bregman_prox(v, 0.5, 4.0, "l1")
    assert torch.equal(theta, torch.tensor([6.0, 0.0, 0.0, -10.0]))


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(["l12_row", "l12_kernel"]),
    st.floats(0.01, 2.0),
    st.floats(0.1, 3.0),
)
def test_bregman_group_prox_satisfies_the_optimality_condition(seed, reg, lam, delta):
    # theta = argmin 1/2 ||x - z||^2 + delta * lam * w * sum ||x_g||, z = delta * v:
    # nonzero groups: theta_g - z_g + t * theta_g / ||theta_g|| = 0; zero groups: ||z_g|| <= t
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(6, 3, 2, 2, generator=g, dtype=torch.float64)
    theta = bregman_prox(v, lam, delta, reg)
    lead = 1 if reg == "l12_row" else 2
    t = delta * lam * group_weight(reg, v.shape)
    z = (delta * v).flatten(lead)
    th = theta.flatten(lead)
    norms = th.norm(dim=-1, keepdim=True)
    nonzero = norms.squeeze(-1) > 0
    residual = th - z + t * th / norms.clamp(min=1e-300)
    torch.testing.assert_close(residual[nonzero], torch.zeros_like(residual[nonzero]))
    assert (z[~nonzero].norm(dim=-1) <= t * (1 + 1e-12)).all()


@pytest.mark.parametrize("reg", ["l1", "l12_row", "l12_kernel"])
def test_bregman_init_is_a_fixed_point_of_the_prox(reg):
    theta = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    theta[0] = 0.0
    v0 = bregman_init(theta, 0.7, 1.5, reg)
    torch.testing.assert_close(bregman_prox(v0, 0.7, 1.5, reg), theta, rtol=1e-12, atol=1e-14)


def test_group_reg_refuses_a_tensor_without_its_groups():
    with pytest.raises(ValueError, match=r"Invalid reg: 'l12_kernel' for a parameter of shape"):
        group_soft_threshold(torch.ones(3, 4), 1.0, "l12_kernel")
    with pytest.raises(ValueError, match=r"Invalid reg: 'l12_row' for a parameter of shape"):
        group_soft_threshold(torch.ones(3), 1.0, "l12_row")
