"""ProxSGD: stochastic proximal gradient descent, the baseline of the Bregman paper.

Bungert, Roith, Tenbrinck and Burger, "A Bregman learning framework for sparse neural
networks", JMLR 23(192), 2022, section 5 (the authors' ``ProxSGD`` in ``optimizers.py``);
the l1 case is the stochastic ISTA of Combettes and Wajs, "Signal recovery by proximal
forward-backward splitting", Multiscale Model. Simul. 4(4), 2005.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from sparsebench.optim._checks import CheckedOptimizer, check, check_grad
from sparsebench.optim.prox import group_soft_threshold, group_weight, soft_threshold

__all__ = ["ProxSGD"]

_HPARAMS = ("lr", "lam", "momentum", "reg")


class ProxSGD(CheckedOptimizer):
    """Proximal SGD: an SGD step, then the prox of ``lr * J``::

        buf = momentum * buf + grad    (buf_1 = grad; only if momentum > 0)
        theta -= lr * buf              (or lr * grad)
        theta = prox_{lr J}(theta)

    The momentum is `torch.optim.SGD`'s (no dampening), so with ``lam = 0`` this class is
    `torch.optim.SGD(lr=lr, momentum=momentum)` bit for bit. The prox: l1
    ``S_{lr lam}(theta)``; group ``theta_g * max(0, 1 - lr * lam * w / ||theta_g||)`` with
    ``w = sqrt(group size)``. The authors' ``ProxSGD`` has no momentum (it ignores the key).

    Unlike the Bregman optimizers, a weight thresholded to zero regrows only if one
    gradient step carries it past the threshold.

    Args:
        params: Parameters or parameter groups; groups may override every argument below.
        lr: Learning rate, ``> 0``.
        lam: Regularisation strength ``>= 0``. Default 0.0 (plain SGD).
        momentum: In [0, 1). Default 0.0.
        reg: ``"l1"`` (default), ``"l12_row"``, ``"l12_kernel"`` or ``"none"``, as in
            `LinBreg`. Keyword-only.
    """

    hparams = _HPARAMS

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        lam: float = 0.0,
        momentum: float = 0.0,
        *,
        reg: str = "l1",
    ) -> None:
        check(lr=lr, lam=lam, momentum=momentum, reg=reg)
        super().__init__(params, dict(lr=lr, lam=lam, momentum=momentum, reg=reg))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one proximal SGD step.

        Args:
            closure: Optional closure that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = self.closure_loss(closure)
        for group in self.param_groups:
            lr, lam, momentum, reg = group["lr"], group["lam"], group["momentum"], group["reg"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = check_grad(p)
                if momentum > 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = update.detach().clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(update)
                    update = state["momentum_buffer"]
                # 1. the gradient step
                p.add_(update, alpha=-lr)
                # 2. the prox of lr * J
                if lam == 0 or reg == "none":
                    continue
                if reg == "l1":
                    soft_threshold(p, lr * lam, out=p)
                else:
                    group_soft_threshold(p, lr * lam * group_weight(reg, p.shape), reg, out=p)
        return loss
