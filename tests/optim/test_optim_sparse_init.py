"""sparse_init: kept fraction, whole kernels, variance, untouched biases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsebench.optim import sparse_init


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sparse_init_keeps_about_p_of_the_linear_entries():
    model = nn.Sequential(nn.Linear(1000, 400))
    p = 0.1
    sparse_init(model, p, generator=_gen())
    kept = model[0].weight.count_nonzero().item() / model[0].weight.numel()
    sigma = math.sqrt(p * (1 - p) / model[0].weight.numel())
    assert abs(kept - p) < 4 * sigma


def test_sparse_init_preserves_the_kaiming_variance_of_linear_weights():
    model = nn.Sequential(nn.Linear(1000, 400))
    sparse_init(model, 0.05, generator=_gen())
    variance = model[0].weight.pow(2).mean().item()  # mean 0: E[w^2] over all entries
    assert variance == pytest.approx(2 / 1000, rel=0.05)


def test_sparse_init_keeps_ceil_p_out_in_whole_conv_kernels():
    model = nn.Sequential(nn.Conv2d(40, 50, 5))
    sparse_init(model, 0.07, generator=_gen())
    kernels = model[0].weight.flatten(2)  # (out, in, kh * kw)
    nonzero_entries = (kernels != 0).sum(-1)
    assert set(nonzero_entries.unique().tolist()) == {0, 25}  # each kernel all or nothing
    # ceil(0.07 * 2000) = 140; 0.07 * 2000 is 140.00000000000003 in floating point, so a
    # literal math.ceil would keep 141
    assert int((nonzero_entries == 25).sum()) == 140


def test_sparse_init_preserves_the_kaiming_variance_of_conv_weights():
    model = nn.Sequential(nn.Conv2d(40, 50, 5), nn.Conv2d(1, 20, 5))
    sparse_init(model, 0.1, generator=_gen())
    variance = model[0].weight.pow(2).mean().item()
    assert variance == pytest.approx(2 / (40 * 25), rel=0.1)
    # 20 kernels at p = 0.1: 2 kept, variance still preserved in expectation
    assert int(model[1].weight.flatten(1).any(1).sum()) == 2


def test_sparse_init_leaves_biases_and_norm_layers_untouched():
    model = nn.Sequential(nn.Linear(10, 10), nn.BatchNorm1d(10), nn.Conv1d(1, 2, 3))
    with torch.no_grad():
        model[1].weight.uniform_()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "weight" not in n}
    before["1.weight"] = model[1].weight.detach().clone()
    sparse_init(model, 0.5, generator=_gen())
    for name, value in before.items():
        assert torch.equal(dict(model.named_parameters())[name], value), name


def test_sparse_init_is_reproducible_with_a_generator():
    a, b = nn.Linear(50, 20), nn.Linear(50, 20)
    sparse_init(a, 0.3, generator=_gen(7))
    sparse_init(b, 0.3, generator=_gen(7))
    assert torch.equal(a.weight, b.weight)


def test_sparse_init_with_p_one_is_dense():
    model = nn.Linear(50, 20)
    sparse_init(model, 1.0, generator=_gen())
    assert model.weight.count_nonzero() == model.weight.numel()


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan"), True])
def test_sparse_init_refuses_a_bad_p(p):
    with pytest.raises(ValueError, match=r"Invalid p: .* \(must be in \(0, 1\]\)"):
        sparse_init(nn.Linear(3, 3), p)
