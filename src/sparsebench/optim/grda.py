"""gRDA: generalized regularized dual averaging.

Chao, Wang, Xing and Cheng, "Directional pruning of deep neural networks", NeurIPS 2020
(https://github.com/donlan2710/gRDA-Optimizer, ``grda_pytorch.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from sparsebench.optim._checks import CheckedOptimizer, check
from sparsebench.optim.prox import soft_threshold

__all__ = ["GRDA"]


class GRDA(CheckedOptimizer):
    """Generalized regularized dual averaging (gRDA) with the l1 penalty.

    At constant ``lr`` the iterate is ``w_n = S_{g(n)}(w_0 - lr * sum_{i<=n} grad_i)`` with
    the threshold ``g(n) = c * lr^(1/2) * (n * lr)^mu`` and ``S_t`` the soft threshold. Per
    parameter, with state ``step`` (n), ``accumulator`` (a, starting at ``w_0``) and ``l1``::

        n  += 1
        a  -= lr * grad
        l1 += c * lr^(mu + 1/2) * (n^mu - (n - 1)^mu)
        w   = S_l1(a)

    The increment form of ``l1`` (the authors' PyTorch code) keeps a learning-rate schedule
    correct: each step adds its own ``lr``'s share. The threshold acts on the accumulator,
    not on ``w``, so a pruned weight regrows when ``|a|`` crosses ``l1`` again. No momentum,
    no weight decay. With ``c = 0`` the update is plain SGD, bit for bit (``S_0(a) = a``).
    ``l1`` and ``step`` are Python numbers (double precision, no device sync).

    The step runs ``a -= lr * grad`` once per group over all its tensors
    (``torch._foreach_add_``) and ``w = S_l1(a)`` per tensor (`soft_threshold`, one pass), so
    ``a`` and ``w`` are both written: two passes where `torch.optim.SGD` makes one (the cost
    is measured by ``benchmarks/optim_step.py``).

    Args:
        params: Parameters or parameter groups (a group may override ``lr``, ``c``, ``mu``;
            ``c = 0`` leaves a group unpenalised, e.g. biases).
        lr: Learning rate, ``> 0``; as for plain SGD without momentum (authors: 0.005 to 0.1).
        c: Penalty scale, ``>= 0``; authors: 0 < c < 0.005 for large nets, 0.1 on MNIST.
        mu: Penalty growth exponent in (0, 1); authors recommend 0.5 < mu < 1, typically
            0.501, 0.51 or 0.55 (their MNIST demo uses 0.5). A ``mu`` in (0, 0.5] is allowed
            with a ``UserWarning``; outside (0, 1) it is a ``ValueError``.

    Raises:
        ValueError: For a hyperparameter out of its range, naming it.

    Examples:
        The prunable weights penalised, the biases not (``c = 0`` in their group); the
        threshold grows with the steps, and the weights whose accumulator stays below it are
        exact zeros:

        >>> import torch
        >>> from sparsebench.optim import GRDA, prunable_parameters
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 2))
        >>> weights, _, others = prunable_parameters(model)
        >>> opt = GRDA([{"params": weights}, {"params": others, "c": 0.0}],
        ...            lr=0.1, c=0.05, mu=0.51)
        >>> x, y = torch.randn(64, 20), torch.randint(0, 2, (64,))
        >>> for _ in range(100):
        ...     opt.zero_grad()
        ...     torch.nn.functional.cross_entropy(model(x), y).backward()
        ...     opt.step()
        >>> [bool((w == 0).any()) for w in weights], [bool((b == 0).any()) for b in others]
        ([True, True], [False, False])

        With ``c = 0`` the step is plain SGD, bit for bit:

        >>> w = torch.nn.Parameter(torch.tensor([1.0, -0.5]))
        >>> sgd_w = torch.nn.Parameter(w.detach().clone())
        >>> grda, sgd = GRDA([w], lr=0.1, c=0.0, mu=0.51), torch.optim.SGD([sgd_w], lr=0.1)
        >>> w.grad = sgd_w.grad = torch.tensor([0.3, -0.2])
        >>> grda.step(); sgd.step()
        >>> torch.equal(w, sgd_w)
        True
    """

    hparams = ("lr", "c", "mu")

    def __init__(self, params: Iterable[Any], lr: float, c: float, mu: float) -> None:
        check(lr=lr, c=c, mu=mu)
        super().__init__(params, dict(lr=lr, c=c, mu=mu))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one gRDA step.

        Args:
            closure: Optional closure that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = self.closure_loss(closure)
        for group in self.param_groups:
            lr, c, mu = group["lr"], group["c"], group["mu"]
            params, grads = self.with_grads(group)
            accumulators, thresholds = [], []
            increments: dict[int, float] = {}  # per step count: one pow per group, not per tensor
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["accumulator"] = p.detach().clone()  # a_0 = w_0
                    state["l1"] = 0.0
                state["step"] = n = state["step"] + 1
                if n not in increments:
                    increments[n] = c * lr ** (mu + 0.5) * (n**mu - (n - 1) ** mu)
                state["l1"] += increments[n]
                accumulators.append(state["accumulator"])
                thresholds.append(state["l1"])
            if not params:
                continue
            # a -= lr * grad for the whole group in one call, then w = S_l1(a) per tensor
            torch._foreach_add_(accumulators, grads, alpha=-lr)
            for p, a, l1 in zip(params, accumulators, thresholds, strict=True):
                soft_threshold(a, l1, out=p)
        return loss
