"""ADMM weight pruning (Zhang et al., "A Systematic DNN Weight Pruning Framework using
Alternating Direction Method of Multipliers", ECCV 2018) and its l1 variant
(ALGORITHMS.md sections 2 and 3).

Problem: min f(W) s.t. card(W_i) <= k_i per layer (or + lambda ||Z||_1 with W = Z). Scaled-dual
ADMM over W = Z, repeated for K iterations:

1. W-step: minibatch training on f(W) + sum_i (rho_i / 2) ||W_i - Z_i + U_i||_F^2 (squared norm).
2. Z-step: Z_i = P_{k_i}(W_i + U_i) (keep the k_i largest |.|), or S_{lambda / rho}(W_i + U_i).
3. U-step: U_i = U_i + W_i - Z_i.
4. rho schedule: rho <- min(rho_growth rho, rho_max). U is the scaled dual y / rho, so with
   ``dual_rescale`` U is multiplied by rho_old / rho_new when rho changes, keeping the
   unscaled dual y fixed (Boyd et al. 2011, section 3.4.1); without it (the ADMM pruning
   papers' code) U keeps its value and the implied dual y grows with rho.

Start: W pretrained, Z = P_k(W) (or S(W)), U = 0. Then hard-prune W to the mask of P_k(W) and
retrain with the mask fixed. `ADMM` is the library part, usable in any training loop::

    admm = ADMM.for_model(model, rho=1e-3, sparsity=0.9)
    for k in range(K):
        for x, y in batches:                     # W-step
            loss = F.cross_entropy(model(x), y) + admm.penalty()
            ...
        admm.step()                              # Z- and U-steps, rho schedule
    apply_masks(model, admm.masks())
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from sparsebench.core.metrics import prunable_modules
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.sparsity import apply_masks, keep_count, magnitude_masks, topk_mask
from sparsebench.core.train import Phase, fit, make_optimizer
from sparsebench.methods.base import Context, Method, SparsityParams


class ADMM:
    """Z, U and rho of ADMM pruning for a set of weight tensors.

    Args:
        weights: name -> the Parameter W_i (the same objects the optimizer trains).
        rho: penalty rho (the same for every layer at the start).
        keep: name -> k_i, the nonzeros Z_i may keep (cardinality Z-step); None for l1.
        lam: lambda of the l1 Z-step (used when ``keep`` is None).
        rho_growth: rho_{k+1} = rho_growth * rho_k after every Z/U update (1 = constant).
        rho_max: cap of the growing rho.
        dual_rescale: scale U by rho_old / rho_new when rho grows (Boyd et al. 2011, 3.4.1).
    """

    def __init__(self, weights: dict[str, torch.Tensor], *, rho: float,
                 keep: dict[str, int] | None = None, lam: float = 0.0,
                 rho_growth: float = 1.0, rho_max: float = math.inf,
                 dual_rescale: bool = False):
        if rho < 0:
            raise ValueError(f"Invalid rho: {rho} (must be >= 0)")
        if rho_growth < 1:
            raise ValueError(f"Invalid rho_growth: {rho_growth} (must be >= 1)")
        if keep is None and lam < 0:
            raise ValueError(f"Invalid lam: {lam} (must be >= 0)")
        self.weights, self.keep, self.lam = weights, keep, lam
        self.rho, self.rho_growth, self.rho_max = rho, rho_growth, rho_max
        self.dual_rescale = dual_rescale
        self.iteration = 0
        self._offset: list[torch.Tensor] | None = None  # U - Z, for add_penalty_grad
        with torch.no_grad():
            self.U = {n: torch.zeros_like(w) for n, w in weights.items()}
            self.Z = {n: self._project(n, w.detach().clone()) for n, w in weights.items()}

    @classmethod
    def for_model(cls, model: nn.Module, *, sparsity: float | dict[str, float] | None = None,
                  **kwargs) -> ADMM:
        """ADMM over the prunable weights of ``model``.

        ``sparsity`` is one target for every layer or a per-layer dict (layer name -> target);
        None selects the l1 Z-step (pass ``lam``).
        """
        weights = {name: m.weight for name, m in prunable_modules(model)}
        keep = None
        if sparsity is not None:
            per_layer = sparsity if isinstance(sparsity, dict) else dict.fromkeys(weights,
                                                                                  sparsity)
            keep = {n: keep_count(w.numel(), per_layer.get(n, 0.0)) for n, w in weights.items()}
        return cls(weights, keep=keep, **kwargs)

    def _project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The Z-step's operator: P_k (cardinality) or S_{lam / rho} (l1)."""
        if self.keep is not None:
            return x * topk_mask(x.abs(), self.keep[name])
        if self.rho == 0:
            return x
        return torch.nn.functional.softshrink(x, self.lam / self.rho)

    def penalty(self) -> torch.Tensor:
        """sum_i (rho / 2) ||W_i - Z_i + U_i||_F^2: add it to the minibatch loss (W-step)."""
        total = sum(((w - self.Z[n] + self.U[n]) ** 2).sum() for n, w in self.weights.items())
        return 0.5 * self.rho * total

    @torch.no_grad()
    def add_penalty_grad(self) -> None:
        """Add the penalty's gradient rho (W_i - Z_i + U_i) to each W_i.grad: call it after
        ``loss.backward()`` in place of adding `penalty` to the loss (the same W-step, without
        building the penalty into the autograd graph: two fused passes per step). U - Z is
        fixed during a W-step and computed once per ADMM iteration."""
        if self._offset is None:
            self._offset = [self.U[n] - self.Z[n] for n in self.weights]
        grads, weights, offsets = [], [], []
        for w, offset in zip(self.weights.values(), self._offset, strict=True):
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            grads.append(w.grad)
            weights.append(w)
            offsets.append(offset)
        torch._foreach_add_(grads, weights, alpha=self.rho)
        torch._foreach_add_(grads, offsets, alpha=self.rho)

    @torch.no_grad()
    def step(self) -> dict[str, float]:
        """Z-step, U-step and rho schedule; return the residuals of this iteration.

        Returns:
            primal_residual ||W - Z|| / ||W||, dual_residual rho ||Z - Z_prev|| / ||W||, the rho
            used, and z_sparsity (the sparsity Z gives).
        """
        rho = self.rho
        dual_sq = primal_sq = w_sq = 0.0
        zeros = numel = 0
        for n, w in self.weights.items():
            z_prev = self.Z[n]
            self.Z[n] = self._project(n, w + self.U[n])
            self.U[n] += w - self.Z[n]
            primal_sq += (w - self.Z[n]).pow(2).sum().item()
            dual_sq += (self.Z[n] - z_prev).pow(2).sum().item()
            w_sq += w.pow(2).sum().item()
            zeros += (self.Z[n] == 0).sum().item()
            numel += w.numel()
        self.iteration += 1
        self._offset = None
        self.rho = min(self.rho * self.rho_growth, self.rho_max)
        if self.dual_rescale and self.rho != rho:  # rho grew (from rho > 0: rho 0 stays 0)
            torch._foreach_mul_(list(self.U.values()), rho / self.rho)
        norm = math.sqrt(w_sq) or 1.0
        return {"primal_residual": math.sqrt(primal_sq) / norm,
                "dual_residual": rho * math.sqrt(dual_sq) / norm, "rho": rho,
                "z_sparsity": zeros / numel}

    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        """The final masks: P_k(W) per layer; for l1, the support of Z."""
        if self.keep is not None:
            return {n: topk_mask(w.abs(), self.keep[n]) for n, w in self.weights.items()}
        return {n: z != 0 for n, z in self.Z.items()}

    def state_dict(self) -> dict:
        """Z, U, rho and the iteration count: what an interrupted run needs to resume."""
        return {"Z": {n: z.clone() for n, z in self.Z.items()},
                "U": {n: u.clone() for n, u in self.U.items()},
                "rho": self.rho, "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        if set(state["Z"]) != set(self.weights):
            raise KeyError(f"ADMM state is for layers {sorted(state['Z'])}, "
                           f"not {sorted(self.weights)}")
        self.Z = {n: z.clone().to(self.weights[n].device) for n, z in state["Z"].items()}
        self.U = {n: u.clone().to(self.weights[n].device) for n, u in state["U"].items()}
        self.rho, self.iteration = state["rho"], state["iteration"]
        self._offset = None


class ADMMParams(SparsityParams):
    """``target_sparsity`` for every layer, or ``layer_sparsity`` per layer name.

    Rule: ``rho_max`` >= ``rho`` (rho grows by ``rho_growth`` per iteration up to ``rho_max``).
    ``dual_rescale``: U times rho_old / rho_new when rho grows (Boyd et al. 2011, 3.4.1).
    Off by default, as the pruning papers' code: on the default suite's curve (8x..128x,
    seeds 0-2) it moved test accuracy by -0.04 to +0.00 points, every interval holding zero
    (benchmarks/method_variants_admm.json).
    """

    rho: float = Field(1e-3, gt=0)  # the library's ADMM takes rho = 0 (plain training)
    rho_growth: float = Field(1.0, ge=1)
    rho_max: float = Field(1.0, gt=0)
    dual_rescale: bool = False
    iterations: int = Field(10, ge=1)  # K
    epochs_per_iteration: int = Field(1, ge=1)  # the W-step's length
    batch_size: int = Field(128, gt=0)
    optimizer: OptimizerParams = OptimizerParams(name="adam", lr=1e-3, schedule="constant")

    @model_validator(mode="after")
    def _rho_order(self) -> ADMMParams:
        if self.rho_max < self.rho:
            raise ValueError(f"rho_max {self.rho_max:g} < rho {self.rho:g}; allowed: rho_max "
                             ">= rho")
        return self


class ADMML1Params(ADMMParams):
    """The l1 Z-step: ``lam``; the final mask is |W| at ``target_sparsity`` (or Z's support
    when ``final_mask: support``)."""

    lam: float = Field(1e-4, ge=0)
    final_mask: Literal["magnitude", "support"] = "magnitude"


class ADMMPruning(Method):
    """ADMM pruning with a hard cardinality constraint per layer (Zhang et al. 2018)."""

    name = "admm"
    Params = ADMMParams

    def prune_epochs(self, n_train: int) -> int:
        return self.params.iterations * self.params.epochs_per_iteration

    def _admm(self, model: nn.Module) -> ADMM:
        p = self.params
        return ADMM.for_model(model, sparsity=p.targets(model, self.key), rho=p.rho,
                              rho_growth=p.rho_growth, rho_max=p.rho_max,
                              dual_rescale=p.dual_rescale)

    def _final_masks(self, admm: ADMM, model: nn.Module) -> dict[str, torch.Tensor]:
        return admm.masks()

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        admm, curves = self._iterate(model, ctx)
        apply_masks(model, self._final_masks(admm, model))
        return curves

    def _iterate(self, model: nn.Module, ctx: Context) -> tuple[ADMM, list[dict]]:
        """The K ADMM iterations (W-, Z- and U-steps); the model is left unmasked."""
        p = self.params
        admm = self._admm(model)
        optimizer = make_optimizer(model.parameters(), p.optimizer)
        phase = Phase(p.epochs_per_iteration, p.batch_size, p.optimizer, self.name)
        curves, first = [], 1
        saved = ctx.checkpoint.peek() if ctx.checkpoint is not None else None
        if saved is not None and "admm" in saved["extra"]:  # resume inside iteration ``first``
            admm.load_state_dict(saved["extra"]["admm"])
            curves, first = list(saved["extra"]["curves"]), saved["extra"]["iteration"]
        for k in range(first, p.iterations + 1):
            def state(k: int = k) -> dict:
                return {"admm": admm.state_dict(), "curves": curves, "iteration": k}

            rows = fit(model, ctx.train, ctx.val, phase, generator=ctx.generator,
                       device=ctx.device, optimizer=optimizer, after_backward=admm.add_penalty_grad,
                       progress=ctx.progress, resume=ctx.resume(f"iteration {k}", state),
                       augment=ctx.augment)
            residuals = admm.step()
            last = rows[-1]
            curves.append({"epoch": k, **{key: last[key] for key in (
                "train_loss", "train_accuracy", "val_loss", "val_accuracy", "sparsity")},
                **residuals, "seconds": sum(r["seconds"] for r in rows)})
            if ctx.on_epoch is not None:
                ctx.on_epoch(curves[-1])
        return admm, curves


class ADMML1Pruning(ADMMPruning):
    """ADMM with the l1 proximal Z-step Z = S_{lambda / rho}(W + U) (ALGORITHMS.md section 3)."""

    name = "admm_l1"
    Params = ADMML1Params

    def _admm(self, model: nn.Module) -> ADMM:
        p = self.params
        return ADMM.for_model(model, sparsity=None, lam=p.lam, rho=p.rho,
                              rho_growth=p.rho_growth, rho_max=p.rho_max,
                              dual_rescale=p.dual_rescale)

    def _final_masks(self, admm: ADMM, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.params.final_mask == "support":
            return admm.masks()
        return self._at_target(model)

    def _at_target(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The definition's final prune: the |W| magnitude masks at the target."""
        return magnitude_masks(model, self.params.targets(model, self.key))

    def shares_prune(self) -> bool:
        """The l1 Z-step never reads the target: with the magnitude final mask the level
        enters only in `finish` (Z's support, ``final_mask: support``, is not kept apart)."""
        return self.params.final_mask == "magnitude"

    def trajectory(self, model: nn.Module, ctx: Context) -> list[dict]:
        return self._iterate(model, ctx)[1]

    def finish(self, model: nn.Module) -> None:
        apply_masks(model, self._at_target(model))
