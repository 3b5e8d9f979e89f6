"""Methods that train sparse with a sparsity-inducing optimizer (`sparsebench.optim`):

- ``grda``: gRDA (Chao et al., NeurIPS 2020), from the ordinary random initialisation;
- ``linbreg`` / ``adabreg``: Bregman learning (Bungert et al., JMLR 2022), optionally from the
  Bregman sparse initialisation (``init_density``);
- ``proxsgd``: proximal SGD, the Bregman paper's baseline.

They train from their own initialisation, as their papers do (``init: pretrained`` starts from
the shared dense model instead). The mask is the set of exact nonzeros at the end, handed to
masked retrain (whose epochs may be 0). Sparsity per epoch is in the curves.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from sparsebench.core.metrics import prunable_modules
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.sparsity import apply_masks
from sparsebench.core.train import Phase, fit
from sparsebench.methods.base import Context, Method, MethodParams
from sparsebench.optim import GRDA, AdaBreg, LinBreg, ProxSGD, param_groups, sparse_init
from sparsebench.optim._checks import mu_warning

Beta = Annotated[float, Field(ge=0, lt=1)]
LinearReg = Literal["l1", "l12_row", "none"]
ConvReg = Literal["l1", "l12_kernel", "none"]


class SparseTrainingParams(MethodParams):
    init: Literal["scratch", "pretrained"] = "scratch"
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.1, gt=0)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = Field(10, gt=0)
    gamma: float = Field(0.1, gt=0, le=1)


class GRDAParams(SparseTrainingParams):
    c: float = Field(0.005, ge=0)
    mu: float = Field(0.51, gt=0, lt=1)
    scope: Literal["weights", "all"] = "weights"  # "all": the authors' (biases and BN too)

    @model_validator(mode="after")
    def _warn_small_mu(self) -> GRDAParams:
        if text := mu_warning(self.mu):
            warnings.warn(text, UserWarning, stacklevel=2)
        return self


class BregmanParams(SparseTrainingParams):
    lam: float = Field(1e-3, ge=0)
    delta: float = Field(1.0, gt=0)
    reg_linear: LinearReg = "l1"
    reg_conv: ConvReg = "l1"
    init_density: float | None = Field(None, gt=0, le=1)  # Bregman sparse init: keep p


class LinBregParams(BregmanParams):
    momentum: float = Field(0.0, ge=0, lt=1)


class AdaBregParams(BregmanParams):
    lr: float = Field(1e-3, gt=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class ProxSGDParams(SparseTrainingParams):
    lam: float = Field(1e-4, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    reg_linear: LinearReg = "l1"
    reg_conv: ConvReg = "l1"


class SparseTraining(Method):
    """Train with a sparsity-inducing optimizer; the final exact zeros are the mask."""

    Params = SparseTrainingParams

    @property
    def from_pretrained(self) -> bool:  # type: ignore[override]
        return self.params.init == "pretrained"

    def prune_epochs(self, n_train: int) -> int:
        return self.params.epochs

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        p = self.params
        density = getattr(p, "init_density", None)
        if density is not None and not self.from_pretrained:
            sparse_init(model, density, generator=ctx.generator)
        schedule = OptimizerParams(lr=p.lr, schedule=p.schedule, step_size=p.step_size,
                               gamma=p.gamma)
        curves = fit(model, ctx.train, ctx.val, Phase(p.epochs, p.batch_size, schedule,
                                                      self.name),
                     generator=ctx.generator, device=ctx.device,
                     optimizer=self.optimizer(model), progress=ctx.progress,
                     on_epoch=ctx.on_epoch, resume=ctx.resume(), augment=ctx.augment)
        apply_masks(model, {name: m.weight.detach() != 0 for name, m in prunable_modules(model)})
        return curves


class GRDAMethod(SparseTraining):
    """gRDA: w = S_{g(n, lr)}(w_0 - lr sum g), g(n, lr) = c lr^{1/2} (n lr)^mu."""

    name = "grda"
    Params = GRDAParams
    strength = "c"

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        p = self.params
        if p.scope == "all":
            return GRDA(model.parameters(), lr=p.lr, c=p.c, mu=p.mu)
        weights = {id(m.weight) for _, m in prunable_modules(model)}
        groups = [{"params": [q for q in model.parameters() if id(q) in weights]},
                  {"params": [q for q in model.parameters() if id(q) not in weights], "c": 0.0}]
        return GRDA([g for g in groups if g["params"]], lr=p.lr, c=p.c, mu=p.mu)


class LinBregMethod(SparseTraining):
    """LinBreg (with momentum when ``momentum > 0``): v -= lr g; theta = prox(delta v)."""

    name = "linbreg"
    Params = LinBregParams
    strength = "lam"

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        p = self.params
        groups = param_groups(model, lam=p.lam, reg_linear=p.reg_linear, reg_conv=p.reg_conv,
                              delta=p.delta)
        return LinBreg(groups, lr=p.lr, lam=p.lam, delta=p.delta, momentum=p.momentum)


class AdaBregMethod(SparseTraining):
    """AdaBreg: Adam's moments on the subgradient v; theta = prox(delta v)."""

    name = "adabreg"
    Params = AdaBregParams
    strength = "lam"

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        p = self.params
        groups = param_groups(model, lam=p.lam, reg_linear=p.reg_linear, reg_conv=p.reg_conv,
                              delta=p.delta)
        return AdaBreg(groups, lr=p.lr, lam=p.lam, delta=p.delta, betas=p.betas, eps=p.eps)


class ProxSGDMethod(SparseTraining):
    """Proximal SGD: an SGD step, then prox_{lr lam J}."""

    name = "proxsgd"
    Params = ProxSGDParams
    strength = "lam"

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        p = self.params
        groups = param_groups(model, lam=p.lam, reg_linear=p.reg_linear, reg_conv=p.reg_conv)
        return ProxSGD(groups, lr=p.lr, lam=p.lam, momentum=p.momentum)
