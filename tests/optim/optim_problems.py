"""Tiny models, data and settings shared by the optimizer tests.

No ``__init__.py`` here: the test modules next to this file import it as ``optim_problems``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.optim import OPTIMIZERS, param_groups

#: Settings under which each registered optimizer learns the tiny problem in 20 steps.
#: A new optimizer must add itself here (test_every_registered_optimizer_has_settings).
SETTINGS: dict[str, dict] = {
    "adabreg": {"lr": 0.01, "lam": 0.05},
    "grda": {"lr": 0.1, "c": 0.01, "mu": 0.51},
    "linbreg": {"lr": 0.1, "lam": 0.1},
    "proxsgd": {"lr": 0.1, "lam": 0.01},
}

#: Further configurations for the round-trip tests: (name, kwargs, group regs or None).
VARIANTS: list[tuple[str, dict, dict | None]] = [
    *[(name, kwargs, None) for name, kwargs in sorted(SETTINGS.items())],
    ("linbreg", {"lr": 0.1, "lam": 0.1, "momentum": 0.9, "delta": 2.0}, None),
    ("linbreg", {"lr": 0.1}, {"lam": 0.3, "reg_linear": "l12_row", "reg_conv": "l12_kernel"}),
    ("adabreg", {"lr": 0.01}, {"lam": 0.1, "reg_linear": "l1", "reg_conv": "l12_kernel"}),
    ("proxsgd", {"lr": 0.1, "momentum": 0.9}, {"lam": 0.01, "reg_conv": "l12_kernel"}),
]


def variant_id(variant: tuple[str, dict, dict | None]) -> str:
    name, kwargs, groups = variant
    extra = ",".join(f"{k}={v}" for k, v in sorted({**kwargs, **(groups or {})}.items()))
    return f"{name}[{extra}]"


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def convnet(seed: int = 0) -> nn.Module:
    """1x4x4 inputs: conv 3x3 (4 channels) -> 4x2x2 -> linear to 4 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 4))


def data(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 4-class problem on 1x4x4 inputs: class prototypes plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, 1, 4, 4, generator=g) * 2
    y = torch.randint(0, 4, (n,), generator=g)
    return protos[y] + 0.5 * torch.randn(n, 1, 4, 4, generator=g), y


def build(
    name: str, model: nn.Module, kwargs: dict, groups: dict | None = None
) -> torch.optim.Optimizer:
    params = param_groups(model, **groups) if groups else model.parameters()
    return OPTIMIZERS[name](params, **kwargs)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    batch: tuple[torch.Tensor, torch.Tensor],
    after_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Full-batch steps; returns the loss before each step."""
    x, y = batch
    losses = []
    for i in range(steps):
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step(i)
    return losses


def minibatch_train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int):
    """Steps on minibatches that depend only on the step index (so runs can be resumed)."""
    x, y = data(256)
    for i in range(start, start + steps):
        idx = torch.arange(i * 32, i * 32 + 32) % len(y)
        opt.zero_grad()
        loss_fn(model, x[idx], y[idx]).backward()
        opt.step()


def twin(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def assert_same_params(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
