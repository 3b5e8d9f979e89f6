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

    The scaled-dual ADMM of Zhang et al. 2018 ("A Systematic DNN Weight Pruning Framework
    using Alternating Direction Method of Multipliers", ECCV 2018): the W-step is the caller's
    training with `penalty` (or `add_penalty_grad`), then `step` makes the Z-step
    Z_i = P_{k_i}(W_i + U_i), or S_{lam / rho}(W_i + U_i) for l1, and the U-step
    U_i = U_i + W_i - Z_i (Boyd, Parikh, Chu, Peleato and Eckstein, "Distributed optimization
    and statistical learning via the alternating direction method of multipliers",
    Foundations and Trends in Machine Learning 3(1), 2011, sections 3.1.1 and 4.4.3). At the
    start Z = P_k(W) (or S(W)) and U = 0.

    Args:
        weights: Name -> the Parameter W_i (the same objects the optimizer trains).
        rho: Penalty rho, ``>= 0`` (the same for every layer at the start; 0: plain training).
        keep: Name -> k_i, the nonzeros Z_i may keep (cardinality Z-step); None for l1.
        lam: Lambda of the l1 Z-step, ``>= 0`` (used when ``keep`` is None).
        rho_growth: rho_{k+1} = rho_growth * rho_k after every Z/U update, ``>= 1``
            (1: constant).
        rho_max: Cap of the growing rho.
        dual_rescale: Scale U by rho_old / rho_new when rho grows, keeping the unscaled dual
            y = rho U fixed (Boyd et al. 2011, section 3.4.1).

    Raises:
        ValueError: For ``rho < 0``, ``rho_growth < 1``, or ``lam < 0`` with the l1 Z-step.

    Examples:
        ADMM in a plain training loop: the penalty's gradient is added after each backward
        pass (the W-step), `step` makes the Z- and U-steps. Z keeps exactly k_i nonzeros, the
        primal residual falls, and the final masks reach the target:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.core.sparsity import apply_masks
        >>> from sparsebench.methods import ADMM
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> admm = ADMM.for_model(model, rho=1.0, sparsity=0.75)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> residuals = []
        >>> for k in range(5):
        ...     for _ in range(10):
        ...         optimizer.zero_grad()
        ...         F.cross_entropy(model(x), y).backward()
        ...         admm.add_penalty_grad()
        ...         optimizer.step()
        ...     residuals.append(admm.step())
        >>> admm.keep, [int((z != 0).sum()) for z in admm.Z.values()]
        ({'0': 32, '2': 12}, [32, 12])
        >>> residuals[-1]["primal_residual"] < residuals[0]["primal_residual"] / 10
        True
        >>> apply_masks(model, admm.masks())
        >>> sparsity_summary(model)["sparsity"]
        0.75
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

        Args:
            model: The model; its prunable weights are the W_i.
            sparsity: One target for every layer, or a per-layer dict (layer name -> target,
                0 for a layer not named); None selects the l1 Z-step (pass ``lam``).
            **kwargs (Any): The other arguments of `ADMM` (``rho`` is required).

        Returns:
            The ADMM state, Z and U for each prunable layer.
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
        """The W-step's penalty sum_i (rho / 2) ||W_i - Z_i + U_i||_F^2 (Zhang et al. 2018).

        Returns:
            The penalty, a scalar in the autograd graph of the weights: add it to the
            minibatch loss.
        """
        total = sum(((w - self.Z[n] + self.U[n]) ** 2).sum() for n, w in self.weights.items())
        return 0.5 * self.rho * total

    @torch.no_grad()
    def add_penalty_grad(self) -> None:
        """Add the penalty's gradient rho (W_i - Z_i + U_i) to each W_i.grad.

        Call it after ``loss.backward()`` in place of adding `penalty` to the loss: the same
        W-step, without building the penalty into the autograd graph (two fused passes per
        step). U - Z is fixed during a W-step and computed once per ADMM iteration. A weight
        without a gradient gets one.

        Examples:
            The same gradient as `penalty` through autograd:

            >>> import torch
            >>> from sparsebench.methods import ADMM
            >>> w = torch.nn.Parameter(torch.tensor([1.0, -0.2, 0.05, 3.0]))
            >>> admm = ADMM({"w": w}, rho=0.5, keep={"w": 2})
            >>> admm.penalty().backward()
            >>> by_autograd, w.grad = w.grad, None
            >>> admm.add_penalty_grad()
            >>> torch.allclose(w.grad, by_autograd), w.grad
            (True, tensor([ 0.0000, -0.1000,  0.0250,  0.0000]))
        """
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
        """The Z-step, the U-step and the rho schedule of one ADMM iteration.

        Z_i = P_{k_i}(W_i + U_i) (or S_{lam / rho}(W_i + U_i)), U_i = U_i + W_i - Z_i, then
        rho <- min(rho_growth rho, rho_max) (Zhang et al. 2018; Boyd et al. 2011).

        Returns:
            The residuals of this iteration: ``primal_residual`` ||W - Z|| / ||W||,
            ``dual_residual`` rho ||Z - Z_prev|| / ||W||, the ``rho`` used, and
            ``z_sparsity`` (the sparsity Z gives).
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
        """The final masks: the support of P_k(W) per layer; for l1, the support of Z.

        Returns:
            Layer name -> bool mask of the weight's shape.
        """
        if self.keep is not None:
            return {n: topk_mask(w.abs(), self.keep[n]) for n, w in self.weights.items()}
        return {n: z != 0 for n, z in self.Z.items()}

    def state_dict(self) -> dict:
        """Z, U, rho and the iteration count: what an interrupted run needs to resume.

        Returns:
            A dict of copies, for `load_state_dict`.
        """
        return {"Z": {n: z.clone() for n, z in self.Z.items()},
                "U": {n: u.clone() for n, u in self.U.items()},
                "rho": self.rho, "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved, on the weights' devices.

        Args:
            state: A `state_dict` of an ADMM over the same layers.

        Raises:
            KeyError: If ``state`` is for other layers.
        """
        if set(state["Z"]) != set(self.weights):
            raise KeyError(f"ADMM state is for layers {sorted(state['Z'])}, "
                           f"not {sorted(self.weights)}")
        self.Z = {n: z.clone().to(self.weights[n].device) for n, z in state["Z"].items()}
        self.U = {n: u.clone().to(self.weights[n].device) for n, u in state["U"].items()}
        self.rho, self.iteration = state["rho"], state["iteration"]
        self._offset = None


class ADMMParams(SparsityParams):
    """ADMM pruning: ``target_sparsity`` for every layer, or ``layer_sparsity`` per layer name.

    Rule: ``rho_max`` >= ``rho``. Plus the keys of `SparsityParams`.

    Attributes:
        rho: The initial penalty rho, ``> 0`` (the library's `ADMM` also takes 0).
        rho_growth: rho grows by this factor per iteration, up to ``rho_max`` (1: constant).
        rho_max: The cap of the growing rho.
        dual_rescale: U times rho_old / rho_new when rho grows (Boyd et al. 2011, section
            3.4.1). Off by default, as in the pruning papers' code.
        iterations: K, the ADMM iterations.
        epochs_per_iteration: The W-step's length in epochs.
        batch_size: The W-step's batch size.
        optimizer: The W-step's optimizer (one for all iterations).
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
    """ADMM with the l1 Z-step; plus the keys of `ADMMParams`.

    Attributes:
        lam: Lambda of the l1 Z-step Z = S_{lam / rho}(W + U).
        final_mask: ``magnitude``: |W| pruned to ``target_sparsity`` after the last iteration;
            ``support``: the support of Z (the target is then not read).
    """

    lam: float = Field(1e-4, ge=0)
    final_mask: Literal["magnitude", "support"] = "magnitude"


class ADMMPruning(Method):
    """ADMM pruning with a hard cardinality constraint per layer (Zhang et al. 2018).

    Zhang, Ye, Zhang, Tang, Wen, Fardad and Wang, "A Systematic DNN Weight Pruning Framework
    using Alternating Direction Method of Multipliers", ECCV 2018: from the pretrained model,
    K iterations of a W-step (``epochs_per_iteration`` of training on the loss plus the ADMM
    penalty), the Z-step Z_i = P_{k_i}(W_i + U_i) and the U-step (see `ADMM`); then the
    weights are hard-pruned to the support of P_k(W).

    Args:
        params: The ADMM settings and the target (`ADMMParams`).
        key: Its entry under ``methods:``; None: ``admm``.

    Examples:
        Two ADMM iterations of one epoch each; one row of figures per iteration, with the
        residuals, and the final masks at the target:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.methods import Context
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.methods.admm import ADMMPruning
        >>> method = ADMMPruning(ADMMPruning.Params(target_sparsity=0.75, iterations=2,
        ...                                         batch_size=16))
        >>> curves = method.prune(model, ctx)
        >>> [row["epoch"] for row in curves], [row["z_sparsity"] for row in curves]
        ([1, 2], [0.75, 0.75])
        >>> sparsity_summary(model)["sparsity"]
        0.75
    """

    name = "admm"
    Params = ADMMParams

    def prune_epochs(self, n_train: int) -> int:
        """The prune phase's epochs.

        Args:
            n_train: The number of training samples (not needed: the phase is in epochs).

        Returns:
            ``iterations * epochs_per_iteration``.
        """
        return self.params.iterations * self.params.epochs_per_iteration

    def _admm(self, model: nn.Module) -> ADMM:
        p = self.params
        return ADMM.for_model(model, sparsity=p.targets(model, self.key), rho=p.rho,
                              rho_growth=p.rho_growth, rho_max=p.rho_max,
                              dual_rescale=p.dual_rescale)

    def _final_masks(self, admm: ADMM, model: nn.Module) -> dict[str, torch.Tensor]:
        return admm.masks()

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        """Run the K ADMM iterations on ``model``, then apply the final masks.

        Args:
            model: The pretrained model, trained and pruned in place.
            ctx: Data, device and seeded generator of the run; with ``ctx.checkpoint`` the
                iterations resume where a killed run stopped.

        Returns:
            One row per ADMM iteration: the last epoch's figures of its W-step, the
            residuals of `ADMM.step` and the W-step's seconds.
        """
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
    """ADMM with the l1 proximal Z-step Z = S_{lambda / rho}(W + U) (ALGORITHMS.md section 3).

    The problem min f(W) + lambda ||Z||_1 s.t. W = Z, solved by the same W- and U-steps as
    `ADMMPruning` (Zhang et al. 2018) with the soft threshold S as the Z-step (Boyd et al.
    2011, section 4.4.3); the final mask is a magnitude prune of W to the target (or the
    support of Z, ``final_mask: support``).

    Args:
        params: The ADMM settings, ``lam`` and the target (`ADMML1Params`).
        key: Its entry under ``methods:``; None: ``admm_l1``.

    Examples:
        The Z-step never reads the target, so the prune phase is shared by the levels: one
        `trajectory`, finished at two targets:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.methods import Context
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> import copy
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.methods.admm import ADMML1Pruning
        >>> params = ADMML1Pruning.Params(lam=1e-2, rho=0.1, iterations=2, batch_size=16)
        >>> method = ADMML1Pruning(params)
        >>> method.shares_prune()
        True
        >>> curves = method.trajectory(model, ctx)
        >>> len(curves), sparsity_summary(model)["sparsity"]
        (2, 0.0)
        >>> for target in (0.5, 0.75):
        ...     level = copy.deepcopy(model)
        ...     ADMML1Pruning(params.model_copy(update={"target_sparsity": target})).finish(level)
        ...     print(sparsity_summary(level)["sparsity"])
        0.5
        0.75
    """

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
        """Whether the prune phase is shared by the levels.

        The l1 Z-step never reads the target: with the magnitude final mask the level enters
        only in `finish` (Z's support, ``final_mask: support``, is not kept apart).

        Returns:
            True for ``final_mask: magnitude``.
        """
        return self.params.final_mask == "magnitude"

    def trajectory(self, model: nn.Module, ctx: Context) -> list[dict]:
        """The K ADMM iterations, without reading the target; the model is left unmasked.

        Args:
            model: The pretrained model, trained in place.
            ctx: Data, device and seeded generator of the run.

        Returns:
            One row per ADMM iteration (see `ADMMPruning.prune`).
        """
        return self._iterate(model, ctx)[1]

    def finish(self, model: nn.Module) -> None:
        """Apply the magnitude masks at the target to the model `trajectory` left.

        Args:
            model: The model as `trajectory` left it; its masks are applied in place.
        """
        apply_masks(model, self._at_target(model))
