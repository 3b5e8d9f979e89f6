"""Every bad hyperparameter is refused with a ValueError that names it."""

from __future__ import annotations

import pytest
import torch
from optim_problems import SETTINGS, mlp

from sparsebench.optim import OPTIMIZERS, AdaBreg, LinBreg, param_groups

NAN = float("nan")

BAD: list[tuple[str, str, object, str]] = [
    # (optimizer, argument, bad value, allowed range in the message)
    *[(name, "lr", v, "must be > 0") for name in sorted(OPTIMIZERS) for v in (0.0, -0.1, NAN)],
    *[("grda", "mu", v, r"must be in \(0, 1\)") for v in (0.0, 1.0, 1.5, -0.5, NAN)],
    *[("grda", "c", v, "must be >= 0") for v in (-0.001, NAN)],
    *[(n, "lam", -0.1, "must be >= 0") for n in ("linbreg", "adabreg", "proxsgd")],
    *[(n, "delta", v, "must be > 0") for n in ("linbreg", "adabreg") for v in (0.0, -1.0)],
    *[
        (n, "momentum", v, r"must be in \[0, 1\)")
        for n in ("linbreg", "proxsgd")
        for v in (1.0, -0.1)
    ],
    *[("adabreg", "betas", v, "must be a pair") for v in ((1.0, 0.9), (0.9, -0.1), (0.9,), 0.9)],
    ("adabreg", "eps", -1e-8, "must be >= 0"),
    *[
        (n, "fused", v, "must be None, True or False")
        for n in ("linbreg", "adabreg")
        for v in ("yes", 1)
    ],
    *[(n, "reg", "l2", "must be one of") for n in ("linbreg", "adabreg", "proxsgd")],
    ("grda", "lr", "0.1", "must be > 0"),
    ("linbreg", "lam", True, "must be >= 0"),
]


@pytest.mark.parametrize(
    ("name", "arg", "value", "allowed"), BAD, ids=[f"{n}-{a}={v!r}" for n, a, v, _ in BAD]
)
def test_bad_hyperparameter_is_refused_naming_it(name, arg, value, allowed):
    kwargs = {**SETTINGS[name], arg: value}
    with pytest.raises(ValueError, match=rf"Invalid {arg}: .* \({allowed}"):
        OPTIMIZERS[name](mlp().parameters(), **kwargs)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_bad_hyperparameter_in_a_param_group_is_refused_and_not_added(name):
    model = mlp()
    opt = OPTIMIZERS[name]([model[1].weight], **SETTINGS[name])
    with pytest.raises(ValueError, match=r"Invalid lr: -1"):
        opt.add_param_group({"params": [model[3].weight], "lr": -1.0})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("cls", [LinBreg, AdaBreg])
def test_group_reg_on_a_tensor_without_its_groups_is_refused(cls):
    model = mlp()
    with pytest.raises(ValueError, match=r"Invalid reg: 'l12_kernel' for a parameter of shape"):
        cls(param_groups(model, lam=0.1, reg_linear="l12_kernel"), lr=0.1)
    with pytest.raises(
        ValueError, match=r"Invalid reg: 'l12_row' for a parameter of shape \(12,\)"
    ):
        cls(model.parameters(), lr=0.1, lam=0.1, reg="l12_row")  # biases have no rows


def test_flags_are_keyword_only():
    with pytest.raises(TypeError):
        LinBreg(mlp().parameters(), 0.1, 0.1, 1.0, 0.0, "l1")


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    opt = LinBreg(emb.parameters(), lr=0.1, lam=0.1)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("mu", [0.01, 0.3, 0.5])
def test_grda_mu_at_most_one_half_is_allowed_with_a_warning(mu):
    from sparsebench.optim import GRDA

    with pytest.warns(UserWarning, match=rf"mu = {mu} is at most 0\.5: .* need 0\.5 < mu < 1"):
        opt = GRDA(mlp().parameters(), lr=0.1, c=0.01, mu=mu)
    assert opt.param_groups[0]["mu"] == mu


@pytest.mark.parametrize("mu", [0.501, 0.55, 0.99])
def test_grda_mu_in_the_authors_range_gives_no_warning(mu):
    import warnings

    from sparsebench.optim import GRDA

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GRDA(mlp().parameters(), lr=0.1, c=0.01, mu=mu)
