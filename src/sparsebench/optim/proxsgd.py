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

from sparsebench.optim._checks import CheckedOptimizer, check, fusable
from sparsebench.optim._fused import fused_sgd_momentum_
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

    The gradient step runs once per group over all its tensors (``torch._foreach_*``, the
    operations of `torch.optim.SGD`), then the prox in place per tensor. In a regularised
    group with momentum, the momentum and gradient steps run instead in SGD's fused kernel
    (``torch._fused_sgd_``: one pass per tensor instead of three) where the tensors allow it
    (floating, on CPU since torch 2.4, CUDA, ...); the same rule, up to rounding (tested).
    Groups with ``J = 0`` always take SGD's own operations. Without momentum the rule makes
    two passes (the step, then the prox) where `torch.optim.SGD` makes one (the cost is
    measured by ``benchmarks/optim_step.py``).

    Args:
        params: Parameters or parameter groups; groups may override every argument below.
        lr: Learning rate, ``> 0``.
        lam: Regularisation strength ``>= 0``. Default 0.0 (plain SGD).
        momentum: In [0, 1). Default 0.0.
        reg: ``"l1"`` (default), ``"l12_row"``, ``"l12_kernel"`` or ``"none"``, as in
            `LinBreg`. Keyword-only.

    Raises:
        ValueError: For a hyperparameter out of its range, or a group ``reg`` on a tensor
            without such groups, naming it.

    Examples:
        One step with a zero gradient is the prox alone: the soft threshold at
        ``lr * lam = 0.1``.

        >>> import torch
        >>> from sparsebench.optim import ProxSGD
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 0.05, -0.5]))
        >>> opt = ProxSGD([w], lr=0.1, lam=1.0)
        >>> w.grad = torch.zeros(3)
        >>> opt.step()
        >>> [round(v, 4) for v in w.tolist()]
        [0.9, 0.0, -0.4]

        In a training loop, with `param_groups` (biases unregularised) and momentum:

        >>> from sparsebench.optim import param_groups
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(20, 2)
        >>> opt = ProxSGD(param_groups(model, lam=0.5), lr=0.1, momentum=0.9)
        >>> x, y = torch.randn(64, 20), torch.randint(0, 2, (64,))
        >>> for _ in range(50):
        ...     opt.zero_grad()
        ...     torch.nn.functional.cross_entropy(model(x), y).backward()
        ...     opt.step()
        >>> bool((model.weight == 0).any()), bool((model.bias == 0).any())
        (True, False)
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
            params, grads = self.with_grads(group)
            if not params:
                continue
            has_j = lam != 0 and reg != "none"
            # 1. the gradient step: with momentum (and a prox to follow) in SGD's fused kernel
            # where the tensors allow it, else in torch.optim.SGD's own operations
            if momentum > 0 and has_j and all(map(_fusable, params, grads)):
                self._fused_momentum_step(params, grads, lr, momentum)
            else:
                updates = self._momentum(params, grads, momentum) if momentum > 0 else grads
                torch._foreach_add_(params, updates, alpha=-lr)
            # 2. the prox of lr * J, in place per tensor
            if not has_j:
                continue
            for p in params:
                if reg == "l1":
                    soft_threshold(p, lr * lam, out=p)
                else:
                    group_soft_threshold(p, lr * lam * group_weight(reg, p.shape), reg, out=p)
        return loss

    def _momentum(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], momentum: float
    ) -> list[torch.Tensor]:
        """``buf = momentum * buf + grad`` (``buf_1 = grad``) for every tensor: the buffers."""
        bufs, old, old_grads = [], [], []
        for p, grad in zip(params, grads, strict=True):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.detach().clone()
            else:
                old.append(state["momentum_buffer"])
                old_grads.append(grad)
            bufs.append(state["momentum_buffer"])
        if old:
            torch._foreach_mul_(old, momentum)
            torch._foreach_add_(old, old_grads)
        return bufs

    def _fused_momentum_step(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], lr: float, momentum: float
    ) -> None:
        """`_momentum` and ``theta -= lr * buf`` in one pass per tensor (torch._fused_sgd_)."""
        first: tuple[list, list, list] = ([], [], [])  # tensors without a buffer yet
        later: tuple[list, list, list] = ([], [], [])
        for p, grad in zip(params, grads, strict=True):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.empty_like(grad)  # the kernel sets buf = grad
                lists = first
            else:
                lists = later
            lists[0].append(p)
            lists[1].append(grad)
            lists[2].append(state["momentum_buffer"])
        for is_first_step, (targets, group_grads, bufs) in ((True, first), (False, later)):
            fused_sgd_momentum_(
                targets,
                group_grads,
                bufs,
                momentum=momentum,
                dampening=0.0,
                lr=lr,
                is_first_step=is_first_step,
            )


def _fusable(p: torch.Tensor, grad: torch.Tensor) -> bool:
    return fusable(p) and grad.dtype == p.dtype and grad.device == p.device
