"""Sparse initialisation for Bregman learning (training starts sparse and grows).

Bungert, Roith, Tenbrinck and Burger, "A Bregman learning framework for sparse neural
networks", JMLR 23(192), 2022, section 4.2 ("sparse initialisation"); the authors'
``models/aux_funs.py`` (``sparse_weight_normal_`` then ``sparsify_``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsebench.core.metrics import prunable_modules
from sparsebench.optim.groups import _weight_parameter

__all__ = ["sparse_init"]


def _keep_count(fraction: float, n: int) -> int:
    # round first: 0.07 * 100 is 7.000000000000001 in floating point, whose ceil is 8
    return min(n, math.ceil(round(fraction * n, 9)))


@torch.no_grad()
def sparse_init(model: nn.Module, p: float, *, generator: torch.Generator | None = None) -> None:
    """Re-initialise the prunable weights sparse, with the variance of Kaiming-normal.

    For each ``nn.Linear`` / ``nn.Conv*`` weight with fan-in ``n`` (``in * kh * kw``):

    * values ``~ N(0, 2 / n)`` (`torch.nn.init.kaiming_normal_`'s default), scaled by
      ``r = 1 / sqrt(q)`` where ``q`` is the expected kept fraction;
    * linear: each entry kept independently with probability ``p`` (``q = p``);
    * conv: exactly ``k = ceil(p * out * in)`` whole kernels ``W[o, i]`` kept, chosen
      uniformly without replacement (``q = k / (out * in)``, which is ``p`` up to the
      rounding of ``k``; for a small layer, e.g. 20 kernels at p = 0.01, ``1 / sqrt(p)``
      would inflate the variance five-fold).

    So ``E[W_ij^2] = q * r^2 * 2 / n = 2 / n``: the variance of the dense Kaiming init is
    preserved. Biases, norm layers and all other parameters are left untouched. The
    authors' ``sparsify_`` draws the conv kernels with replacement (so fewer than ``k`` may
    survive) and takes ``r`` as a separate setting (10 for p = 0.01 in their MNIST example,
    which is ``1 / sqrt(p)``).

    Args:
        model: The model, modified in place.
        p: Kept fraction in (0, 1]; ``p = 1`` is a dense Kaiming-normal init.
        generator: Optional random generator (its device is where the draws are made).

    Raises:
        ValueError: If ``p`` is not in (0, 1].

    Examples:
        >>> import torch
        >>> from sparsebench.optim import sparse_init
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 20, 5), torch.nn.Flatten(),
        ...                             torch.nn.Linear(20 * 24 * 24, 10))
        >>> sparse_init(model, 0.1, generator=torch.Generator().manual_seed(0))
        >>> conv, linear = model[0].weight, model[2].weight
        >>> int((conv.flatten(1).abs().sum(1) != 0).sum())   # ceil(0.1 * 20 * 1) kernels
        2
        >>> 0.09 < float((linear != 0).float().mean()) < 0.11   # each entry kept with p
        True
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"Invalid p: {p!r} (must be in (0, 1])")
    for _, module in prunable_modules(model):
        weight = _weight_parameter(module)
        if weight is None or weight.numel() == 0:
            continue
        device = generator.device if generator is not None else weight.device
        shape = weight.shape
        fan_in = shape[1:].numel()  # in * kh * kw
        values = torch.randn(shape, generator=generator, device=device, dtype=weight.dtype)
        if isinstance(module, nn.Linear):
            mask = torch.rand(shape, generator=generator, device=device) < p
            kept = float(p)
        else:
            n = shape[0] * shape[1]
            k = _keep_count(p, n)
            chosen = torch.randperm(n, generator=generator, device=device)[:k]
            kernels = torch.zeros(n, dtype=torch.bool, device=device)
            kernels[chosen] = True
            # (out * in,) -> (out, in, 1, ..., 1), broadcast over the kernel dims
            mask = kernels.view(shape[0], shape[1], *([1] * (len(shape) - 2)))
            kept = k / n
        std = math.sqrt(2.0 / fan_in) / math.sqrt(kept)
        weight.copy_(values.mul_(std).mul_(mask))
