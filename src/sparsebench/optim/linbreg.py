"""LinBreg: stochastic linearized Bregman iterations, with optional momentum.

Bungert, Roith, Tenbrinck and Burger, "A Bregman learning framework for sparse neural
networks", JMLR 23(192):1-43, 2022 (https://github.com/TimRoith/BregmanLearning,
``optimizers.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from sparsebench.optim._checks import CheckedOptimizer, check, check_fused
from sparsebench.optim._fused import fused_sgd_momentum_
from sparsebench.optim.prox import bregman_init, bregman_prox

__all__ = ["LinBreg"]

_HPARAMS = ("lr", "lam", "delta", "momentum", "reg")


def regularized(group: dict[str, Any]) -> bool:
    """Whether a parameter group's regulariser J is nonzero.

    A group with ``J = 0`` has ``v = theta / delta`` at all times, so no ``v`` is stored.

    Args:
        group: A parameter group of `LinBreg` or `AdaBreg` (its ``reg`` and ``lam``).

    Returns:
        False for ``reg = "none"`` or ``lam = 0``, else True.
    """
    return group["reg"] != "none" and group["lam"] != 0


class LinBreg(CheckedOptimizer):
    """Linearized Bregman iterations (LinBreg), the sparse-to-dense "inverse scale space" SGD.

    ``v`` is a subgradient of the elastic net ``J_delta(theta) = J(theta) + 1/(2 delta)
    ||theta||^2`` at ``theta``; it starts at ``v_0 = theta_0 / delta + dJ(theta_0)`` (for l1
    ``lam * sign(theta_0)``), so the first prox gives back ``theta_0`` (exactly in real
    arithmetic and for its zeros; in float32 up to one rounding of ``|theta_0| / delta + lam``,
    which is exact for e.g. dyadic weights, see the tests). Per step::

        LinBreg:           v -= lr * grad
        with momentum b:   m = b * m + (1 - b) * lr * grad;   v -= m      (m_0 = 0)
        both:              theta = prox_{delta J}(delta * v)

    For l1, ``theta = delta * S_lam(v)``; for the group norms,
    ``theta_g = delta * v_g * max(0, 1 - lam * w / ||v_g||)`` (derivation in
    `sparsebench.optim.prox.bregman_prox`). Entries with ``|v| <= lam`` (groups with
    ``||v_g|| <= lam * w``) are exact zeros, and regrow once ``v`` leaves that ball.

    A group with ``J = 0`` (``lam = 0`` or ``reg = "none"``, e.g. biases) has
    ``v = theta / delta`` at all times, so ``v`` is not stored and the step is
    ``theta -= delta * lr * grad`` (or ``delta * m``): with ``delta = 1`` this is
    `torch.optim.SGD` bit for bit. If a group's ``lam`` changes from 0 to positive, ``v`` is
    initialised from the current ``theta`` at the next step; from positive to 0 it is
    dropped. That is the reset of the authors' ``lamda_scheduler``; other changes of ``lam``
    keep ``v``.

    With momentum, the fused path (``fused``, the default where possible) does the momentum
    and dual steps in one pass per tensor with SGD's fused kernel (``torch._fused_sgd_``
    with ``dampening = 1 - (1 - b) * lr`` and kernel lr 1, which is exactly the rule above,
    schedules included); it differs from the foreach path by rounding only (tested) and
    stores the same state. The foreach path (no momentum, or ``fused=False``) runs each
    operation of the rule once per group over all its tensors (``torch._foreach_*``, the
    same operations tensor by tensor); the prox is one pass per tensor in both. Without
    momentum the rule writes ``v`` and ``theta``: two passes where `torch.optim.SGD` makes
    one (the cost is measured by ``benchmarks/optim_step.py``).

    Args:
        params: Parameters or parameter groups; groups may override every argument below
            (see `sparsebench.optim.param_groups`).
        lr: Learning rate ``tau``, ``> 0`` (paper: 1e-3; 0.1 for the MNIST MLP).
        lam: Regularisation strength ``>= 0`` (paper: 0.5 for the Fashion-MNIST conv net).
            Default 0.0 (plain SGD), so that groups from `param_groups` carry their own.
        delta: Elastic-net parameter ``> 0``. Default 1.0.
        momentum: ``b`` in [0, 1). Default 0.0 (no momentum buffer is kept).
        reg: ``"l1"`` (default), ``"l12_row"`` (rows of linear weights, weight
            ``sqrt(n_in)``), ``"l12_kernel"`` (conv kernels ``W[o, i]``, weight
            ``sqrt(kh * kw)``) or ``"none"``. Keyword-only.
        fused: Momentum through the fused kernel: ``True``, ``False`` (the foreach path),
            or ``None`` (default) for fused wherever the parameters allow it (floating
            tensors on CPU since torch 2.4, CUDA, ...). Keyword-only.

    Raises:
        ValueError: For a hyperparameter out of its range, or a group ``reg`` on a tensor
            without such groups, naming it.

    Examples:
        Bregman learning starts sparse (`sparse_init`) and lets weights grow back only where
        the gradients insist: the network stays sparse while it learns.

        >>> import torch
        >>> from sparsebench.optim import LinBreg, param_groups, sparse_init
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 2))
        >>> sparse_init(model, 0.1)                  # about 10% of each weight nonzero
        >>> opt = LinBreg(param_groups(model, lam=0.5), lr=0.1, momentum=0.9)
        >>> x, y = torch.randn(64, 20), torch.randint(0, 2, (64,))
        >>> for _ in range(100):
        ...     opt.zero_grad()
        ...     torch.nn.functional.cross_entropy(model(x), y).backward()
        ...     opt.step()
        >>> density = float((model[0].weight != 0).float().mean())
        >>> 0 < density < 0.3                        # 13% here
        True

        With ``lam = 0`` (and ``delta = 1``) it is `torch.optim.SGD`, bit for bit:

        >>> w = torch.nn.Parameter(torch.tensor([1.0, -0.5]))
        >>> sgd_w = torch.nn.Parameter(w.detach().clone())
        >>> breg, sgd = LinBreg([w], lr=0.1), torch.optim.SGD([sgd_w], lr=0.1)
        >>> w.grad = sgd_w.grad = torch.tensor([0.3, -0.2])
        >>> breg.step(); sgd.step()
        >>> torch.equal(w, sgd_w)
        True
    """

    hparams = _HPARAMS

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        lam: float = 0.0,
        delta: float = 1.0,
        momentum: float = 0.0,
        *,
        reg: str = "l1",
        fused: bool | None = None,
    ) -> None:
        check(lr=lr, lam=lam, delta=delta, momentum=momentum, reg=reg)
        check_fused(fused)
        defaults = dict(lr=lr, lam=lam, delta=delta, momentum=momentum, reg=reg, fused=fused)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one LinBreg step.

        Args:
            closure: Optional closure that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = self.closure_loss(closure)
        for group in self.param_groups:
            if group["fused"] and group["momentum"] > 0:
                self._fused_momentum_group(group)
            else:
                self._foreach_group(group)
        return loss

    def _foreach_group(self, group: dict[str, Any]) -> None:
        lr, lam, delta = group["lr"], group["lam"], group["delta"]
        beta, reg = group["momentum"], group["reg"]
        has_j = regularized(group)
        params, grads = self.with_grads(group)
        bufs, vs = [], []
        for p in params:
            state = self.state[p]
            if beta > 0:
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            if not has_j:
                state.pop("v", None)  # J = 0: v = theta / delta is not stored
            elif "v" not in state:
                state["v"] = bregman_init(p, lam, delta, reg)
                vs.append(state["v"])
            else:
                vs.append(state["v"])
        if not params:
            return
        # 1. the update of the dual variable: lr * g, or m = b m + (1 - b) lr g
        updates, scale = grads, lr
        if beta > 0:
            torch._foreach_mul_(bufs, beta)
            torch._foreach_add_(bufs, grads, alpha=(1 - beta) * lr)
            updates, scale = bufs, 1.0
        if not has_j:
            # 2. (J = 0) v = theta / delta, so theta -= delta * update
            torch._foreach_add_(params, updates, alpha=-scale * delta)
            return
        # 2. v -= update, then theta = prox_{delta J}(delta v) per tensor
        torch._foreach_add_(vs, updates, alpha=-scale)
        for p, v in zip(params, vs, strict=True):
            bregman_prox(v, lam, delta, reg, out=p)

    def _fused_momentum_group(self, group: dict[str, Any]) -> None:
        # The momentum step in one pass per tensor with SGD's fused kernel, which computes
        # buf = momentum * buf + (1 - dampening) * g and then x -= lr_kernel * buf. With
        # dampening = 1 - (1 - b) * lr and lr_kernel = 1 (delta for a J = 0 group) this is
        # m = b m + (1 - b) lr g; v -= m, with m stored as in the single-tensor path.
        lr, lam, delta = group["lr"], group["lam"], group["delta"]
        beta, reg = group["momentum"], group["reg"]
        has_j = regularized(group)
        params, grads = self.with_grads(group)
        targets, bufs = [], []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            if has_j:
                if "v" not in state:
                    state["v"] = bregman_init(p, lam, delta, reg)
                targets.append(state["v"])
            else:
                state.pop("v", None)
                targets.append(p)
            bufs.append(state["momentum_buffer"])
        fused_sgd_momentum_(
            targets,
            grads,
            bufs,
            momentum=beta,
            lr=1.0 if has_j else delta,
            dampening=1.0 - (1.0 - beta) * lr,
        )
        if has_j:
            for p, v in zip(params, targets, strict=True):
                bregman_prox(v, lam, delta, reg, out=p)
