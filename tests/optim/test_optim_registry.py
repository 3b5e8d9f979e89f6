"""Behaviour every registered optimizer shares; parametrized over the registry."""

from __future__ import annotations

import io

import pytest
import torch
from optim_problems import (
    SETTINGS,
    VARIANTS,
    assert_same_params,
    build,
    convnet,
    data,
    loss_fn,
    minibatch_train,
    mlp,
    train,
    variant_id,
)

from sparsebench.optim import OPTIMIZERS, build_optimizer
from sparsebench.util.errors import UsageError


def test_every_registered_optimizer_has_settings():
    assert set(SETTINGS) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_loss_falls_within_20_steps(name):
    model = mlp()
    losses = train(model, build(name, model, SETTINGS[name]), 20, data())
    final = loss_fn(model, *data()).item()
    assert final < 0.7 * losses[0], (losses[0], final)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_build_optimizer_builds_the_registered_class(name):
    opt = build_optimizer(name, mlp().parameters(), **SETTINGS[name])
    assert type(opt) is OPTIMIZERS[name]
    assert all(opt.defaults[k] == v for k, v in SETTINGS[name].items())


def test_build_optimizer_refuses_an_unknown_name_listing_the_known_ones():
    with pytest.raises(UsageError, match=r"optimizer.name: unknown name 'adamw'; allowed: "):
        build_optimizer("adamw", mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="adabreg, grda, linbreg, proxsgd"):
        build_optimizer("adamw", mlp().parameters(), lr=0.1)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_state_dict_round_trip_continues_the_same_trajectory(variant):
    name, kwargs, groups = variant
    model = convnet()
    opt = build(name, model, kwargs, groups)
    minibatch_train(model, opt, 5, start=0)

    # checkpoint as a training loop would: torch.save, then torch.load(weights_only=True)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = convnet(seed=1)  # different weights, overwritten by the checkpoint
    resumed.load_state_dict(saved["model"])
    resumed_opt = build(name, resumed, kwargs, groups)
    resumed_opt.load_state_dict(saved["opt"])

    minibatch_train(model, opt, 5, start=5)
    minibatch_train(resumed, resumed_opt, 5, start=5)
    assert_same_params(model, resumed)
    assert len(opt.state) == len(resumed_opt.state)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_with_closure_returns_the_loss_and_steps_like_without(name):
    x, y = data()
    model, other = mlp(), mlp()
    opt, other_opt = build(name, model, SETTINGS[name]), build(name, other, SETTINGS[name])

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        return loss

    with torch.no_grad():  # step() must re-enable grad for the closure
        loss = opt.step(closure)
    losses = train(other, other_opt, 1, (x, y))
    assert loss.item() == losses[0]
    assert_same_params(model, other)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_parameters_without_grad_are_left_alone(name):
    model = mlp()
    frozen = model[1].weight.detach().clone()
    model[1].weight.requires_grad_(False)
    train(model, build(name, model, SETTINGS[name]), 3, data())
    assert torch.equal(model[1].weight, frozen)
