"""The rewritten steps (torch._foreach_* over a group, SGD's fused momentum kernel, the group
prox over dims) against the straightforward per-tensor formulas of the docstrings.

Each reference below is the update rule written out tensor by tensor in plain operations,
independent of `sparsebench.optim.prox` (only the Bregman initialisation is shared: it is not
part of the step). Several steps with fresh gradients, two or three parameter groups with
their own hyperparameters, a learning-rate change half way and a parameter that skips a step
(``grad = None``); parameters and state must agree to 1e-6 relative (of the tensor's largest
entry: near a threshold the two ways of writing the group factor round differently).
"""

from __future__ import annotations

import math

import pytest
import torch
from optim_problems import convnet
from torch import nn

from sparsebench.optim import GRDA, LinBreg, ProxSGD, param_groups
from sparsebench.optim.prox import bregman_init

STEPS = 12


def l1_prox(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0)


def group_prox(x: torch.Tensor, t_per_weight: float, reg: str) -> torch.Tensor:
    """``x_g * max(0, 1 - t * w / ||x_g||)`` with ``w = sqrt(group size)``."""
    lead = 1 if reg == "l12_row" else 2
    x2 = x.reshape(math.prod(x.shape[:lead]), -1)
    t = t_per_weight * math.sqrt(x2.shape[1])
    norms = x2.norm(dim=1, keepdim=True)
    factor = torch.where(norms > 0, torch.clamp(1 - t / norms, min=0), torch.zeros_like(norms))
    return (x2 * factor).reshape(x.shape)


def prox(x: torch.Tensor, t: float, reg: str) -> torch.Tensor:
    if reg == "none" or t == 0:
        return x.clone()
    return l1_prox(x, t) if reg == "l1" else group_prox(x, t, reg)


def reference_grda(group: dict, theta: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
    lr, c, mu = group["lr"], group["c"], group["mu"]
    if not state:
        state.update(step=0, accumulator=theta.clone(), l1=0.0)
    state["step"] += 1
    n = state["step"]
    state["accumulator"] = state["accumulator"] - lr * grad
    state["l1"] += c * lr ** (mu + 0.5) * (n**mu - (n - 1) ** mu)
    theta.copy_(l1_prox(state["accumulator"], state["l1"]))


def reference_proxsgd(group: dict, theta: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
    lr, lam, momentum, reg = group["lr"], group["lam"], group["momentum"], group["reg"]
    update = grad
    if momentum > 0:
        buf = state.get("momentum_buffer")
        state["momentum_buffer"] = grad.clone() if buf is None else momentum * buf + grad
        update = state["momentum_buffer"]
    theta.copy_(prox(theta - lr * update, lr * lam, reg))


def reference_linbreg(group: dict, theta: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
    lr, lam, delta = group["lr"], group["lam"], group["delta"]
    beta, reg = group["momentum"], group["reg"]
    update = lr * grad
    if beta > 0:
        m = state.get("momentum_buffer", torch.zeros_like(theta))
        state["momentum_buffer"] = update = beta * m + (1 - beta) * lr * grad
    if lam == 0 or reg == "none":
        theta.copy_(theta - delta * update)
        return
    if "v" not in state:
        state["v"] = bregman_init(theta, lam, delta, reg)
    state["v"] = state["v"] - update
    theta.copy_(delta * prox(state["v"], lam, reg))


def mlp_with_rows() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def gradients(model: nn.Module) -> list[list[torch.Tensor | None]]:
    """Per step a gradient per parameter; the last parameter skips step 3 (None)."""
    g = torch.Generator().manual_seed(1)
    steps = []
    for i in range(STEPS):
        grads = [torch.randn(p.shape, generator=g) * 0.3 for p in model.parameters()]
        if i == 3:
            grads[-1] = None
        steps.append(grads)
    return steps


CONFIGS = {
    "grda": (
        GRDA,
        reference_grda,
        lambda m: [
            {"params": [p for n, p in m.named_parameters() if n.endswith("weight")]},
            {"params": [p for n, p in m.named_parameters() if n.endswith("bias")], "mu": 0.7},
        ],
        {"lr": 0.1, "c": 0.05, "mu": 0.55},
    ),
    "proxsgd-l1": (ProxSGD, reference_proxsgd, lambda m: param_groups(m, lam=0.5), {"lr": 0.1}),
    "proxsgd-l1-momentum": (
        ProxSGD,
        reference_proxsgd,
        lambda m: param_groups(m, lam=0.5),
        {"lr": 0.1, "momentum": 0.9},
    ),
    "proxsgd-l12-momentum": (
        ProxSGD,
        reference_proxsgd,
        lambda m: param_groups(m, lam=0.3, reg_linear="l12_row", reg_conv="l12_kernel"),
        {"lr": 0.1, "momentum": 0.8},
    ),
    "proxsgd-l12": (
        ProxSGD,
        reference_proxsgd,
        lambda m: param_groups(m, lam=0.3, reg_linear="l12_row", reg_conv="l12_kernel"),
        {"lr": 0.1},
    ),
    "linbreg-l1": (LinBreg, reference_linbreg, lambda m: param_groups(m, lam=0.2), {"lr": 0.1}),
    "linbreg-l1-delta": (
        LinBreg,
        reference_linbreg,
        lambda m: param_groups(m, lam=0.2, delta=1.5),
        {"lr": 0.1},
    ),
    "linbreg-momentum-fused": (
        LinBreg,
        reference_linbreg,
        lambda m: param_groups(m, lam=0.2, delta=1.5),
        {"lr": 0.1, "momentum": 0.9, "fused": True},
    ),
    "linbreg-momentum-foreach": (
        LinBreg,
        reference_linbreg,
        lambda m: param_groups(m, lam=0.2, delta=1.5),
        {"lr": 0.1, "momentum": 0.9, "fused": False},
    ),
    "linbreg-l12": (
        LinBreg,
        reference_linbreg,
        lambda m: param_groups(m, lam=0.1, reg_linear="l12_row", reg_conv="l12_kernel"),
        {"lr": 0.1},
    ),
}


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().item() or 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * scale, msg=what)


@pytest.mark.parametrize("model_fn", [convnet, mlp_with_rows], ids=["convnet", "mlp"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_rewritten_step_matches_the_straightforward_formula(config, model_fn):
    cls, reference_step, groups, kwargs = CONFIGS[config]
    model = model_fn()
    opt = cls(groups(model), **kwargs)
    # the reference steps copies of the parameters with the groups' resolved hyperparameters
    ref_groups = [
        {**g, "params": [p.detach().clone() for p in g["params"]]} for g in opt.param_groups
    ]
    ref_state: list[list[dict]] = [[{} for _ in g["params"]] for g in ref_groups]
    index = {
        id(p): (i, j) for i, g in enumerate(opt.param_groups) for j, p in enumerate(g["params"])
    }
    params = list(model.parameters())
    for step, grads in enumerate(gradients(model)):
        if step == STEPS // 2:  # a schedule: both sides see the new lr
            for group in (*opt.param_groups, *ref_groups):
                group["lr"] *= 0.5
        for p, grad in zip(params, grads, strict=True):
            p.grad = None if grad is None else grad.clone()
            if grad is not None:
                i, j = index[id(p)]
                reference_step(ref_groups[i], ref_groups[i]["params"][j], grad, ref_state[i][j])
        opt.step()
    for p in params:
        i, j = index[id(p)]
        assert_close_relative(p.detach(), ref_groups[i]["params"][j], f"{config}: parameter")
        state, expected = opt.state[p], ref_state[i][j]
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert_close_relative(state[key], value, f"{config}: state {key}")
            else:
                assert state[key] == pytest.approx(value, rel=1e-12), key
