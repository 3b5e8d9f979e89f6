"""AdaBreg: linearized Bregman iterations with Adam's moment estimates.

Bungert, Roith, Tenbrinck and Burger, "A Bregman learning framework for sparse neural
networks", JMLR 23(192):1-43, 2022 (https://github.com/TimRoith/BregmanLearning,
``optimizers.py``, class ``AdamBreg``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from sparsebench.optim._checks import CheckedOptimizer, check, check_fused, check_grad
from sparsebench.optim.linbreg import regularized
from sparsebench.optim.prox import bregman_init, bregman_prox

__all__ = ["AdaBreg"]

_HPARAMS = ("lr", "lam", "delta", "betas", "eps", "reg")


class AdaBreg(CheckedOptimizer):
    """AdaBreg: the Bregman step of `LinBreg` driven by Adam's update direction.

    Per step ``t = 1, 2, ...``, with ``v_0 = theta_0 / delta + dJ(theta_0)`` as in `LinBreg`::

        m = b1 * m + (1 - b1) * grad              (Adam's first moment, m_0 = 0)
        s = b2 * s + (1 - b2) * grad^2            (second moment, s_0 = 0)
        v -= lr / (1 - b1^t) * m / (sqrt(s) / sqrt(1 - b2^t) + eps)
        theta = prox_{delta J}(delta * v)

    i.e. ``v -= lr * m_hat / (sqrt(s_hat) + eps)`` with both moments bias-corrected, as
    `torch.optim.Adam` computes it (same operations, same rounding; see ``fused``). The
    authors' ``AdamBreg`` computes ``alpha = lr / (1 - b1^t)`` but then steps with ``lr``,
    so its first moment is not bias-corrected (the first steps are smaller by ``1 - b1^t``);
    this class follows ALGORITHMS.md and Adam.

    A group with ``J = 0`` (``lam = 0`` or ``reg = "none"``) stores no ``v`` and steps
    ``theta`` directly, scaled by ``delta``; with ``delta = 1`` it is `torch.optim.Adam`
    (no weight decay) with the same ``fused`` flag, bit for bit. Changing ``lam`` behaves as
    in `LinBreg`.

    Two paths compute the same update: the single-tensor path (Adam's single-tensor
    operations, then the prox) and the fused path, which runs Adam's fused kernel
    (``torch._fused_adam_``, one pass per tensor for both moments and the step) on ``v``
    and then the prox (the faster of the two: ``benchmarks/optim_step.py``). The two paths
    differ by rounding only (a few ulp after 50 steps, tested), and their state dicts are
    interchangeable.

    Args:
        params: Parameters or parameter groups; groups may override every argument below.
        lr: Learning rate, ``> 0`` (paper: 1e-3).
        lam: Regularisation strength ``>= 0`` (paper: 0.1 for conv kernels of ResNet-18).
            Default 0.0 (plain Adam), so that groups from `param_groups` carry their own.
        delta: Elastic-net parameter ``> 0``. Default 1.0.
        betas: Adam's ``(b1, b2)``, each in [0, 1). Default (0.9, 0.999).
        eps: Added to the denominator, ``>= 0``. Default 1e-8.
        reg: ``"l1"`` (default), ``"l12_row"``, ``"l12_kernel"`` or ``"none"``, as in
            `LinBreg`. Keyword-only.
        fused: ``True`` for the fused path, ``False`` for the single-tensor path, ``None``
            (default) for fused wherever the parameters allow it (floating tensors on a
            device with Adam's fused kernel: CPU since torch 2.4, CUDA, ...). Resolved per
            group when the group is added. Keyword-only.

    Raises:
        ValueError: For a hyperparameter out of its range, or a group ``reg`` on a tensor
            without such groups, naming it.

    Examples:
        Row sparsity: the group norm over each row of a linear weight (``l12_row``) zeroes
        whole rows, i.e. whole units of the layer before it.

        >>> import torch
        >>> from sparsebench.optim import AdaBreg, param_groups, sparse_init
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 2))
        >>> sparse_init(model, 0.1)
        >>> opt = AdaBreg(param_groups(model, lam=0.5, reg_linear="l12_row"), lr=0.01)
        >>> x, y = torch.randn(64, 20), torch.randint(0, 2, (64,))
        >>> for _ in range(100):
        ...     opt.zero_grad()
        ...     torch.nn.functional.cross_entropy(model(x), y).backward()
        ...     opt.step()
        >>> rows = model[0].weight.abs().sum(dim=1)  # one norm per unit of the first layer
        >>> bool((rows == 0).any()), bool((rows != 0).any())
        (True, True)
    """

    hparams = _HPARAMS

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        lam: float = 0.0,
        delta: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        reg: str = "l1",
        fused: bool | None = None,
    ) -> None:
        check(lr=lr, lam=lam, delta=delta, betas=betas, eps=eps, reg=reg)
        check_fused(fused)
        defaults = dict(
            lr=lr, lam=lam, delta=delta, betas=tuple(betas), eps=eps, reg=reg, fused=fused
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one AdaBreg step.

        Args:
            closure: Optional closure that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = self.closure_loss(closure)
        for group in self.param_groups:
            if group["fused"]:
                self._fused_group(group)
            else:
                self._single_tensor_group(group)
        return loss

    def _state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            # the step count is a float32 tensor as in torch.optim.Adam (on the parameter's
            # device for the fused kernel), so state dicts move between the two paths
            device = p.device if group["fused"] else torch.device("cpu")
            state["step"] = torch.zeros((), dtype=torch.float32, device=device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if regularized(group):
            if "v" not in state:
                state["v"] = bregman_init(p, group["lam"], group["delta"], group["reg"])
        else:
            state.pop("v", None)  # J = 0: v = theta / delta is not stored
        return state

    def _single_tensor_group(self, group: dict[str, Any]) -> None:
        lr, lam, delta, reg = group["lr"], group["lam"], group["delta"], group["reg"]
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        has_j = regularized(group)
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = check_grad(p)
            state = self._state(p, group)
            state["step"] += 1
            t = state["step"].item()
            m, s = state["exp_avg"], state["exp_avg_sq"]
            # 1. Adam's moments and step size, in torch.optim.Adam's operations
            m.lerp_(grad, 1 - beta1)
            s.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = lr / (1 - beta1**t)
            denom = (s.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
            if not has_j:
                # 2. (J = 0) v = theta / delta, so step theta by delta times the update
                p.addcdiv_(m, denom, value=-step_size * delta)
                continue
            # 2. step v, then theta = prox_{delta J}(delta v)
            state["v"].addcdiv_(m, denom, value=-step_size)
            bregman_prox(state["v"], lam, delta, reg, out=p)

    def _fused_group(self, group: dict[str, Any]) -> None:
        # The same update with Adam's fused kernel (one pass for moments and step) applied
        # to v instead of theta; J = 0 groups step theta with lr * delta.
        lr, lam, delta, reg = group["lr"], group["lam"], group["delta"], group["reg"]
        beta1, beta2 = group["betas"]
        has_j = regularized(group)
        lists: dict[tuple[torch.device, torch.dtype], list[list[torch.Tensor]]] = {}
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = check_grad(p)
            state = self._state(p, group)
            target = state["v"] if has_j else p
            row = (target, grad, state["exp_avg"], state["exp_avg_sq"], state["step"])
            for column, tensor in zip(
                lists.setdefault((p.device, p.dtype), [[], [], [], [], []]), row, strict=True
            ):
                column.append(tensor)
            params.append(p)
        for targets, grads, exp_avgs, exp_avg_sqs, steps in lists.values():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                targets,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                amsgrad=False,
                lr=lr if has_j else lr * delta,
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=group["eps"],
                maximize=False,
            )
        if has_j:
            for p in params:
                bregman_prox(self.state[p]["v"], lam, delta, reg, out=p)
