"""Proximal operators and subgradients of the sparsity regularisers used by the optimizers.

The regularisers J (Bungert, Roith, Tenbrinck and Burger, "A Bregman learning framework for
sparse neural networks", JMLR 23(192), 2022, section 4 and the authors' ``regularizers.py``):

* ``"l1"``: ``J(W) = lam * sum |W_ij|``;
* ``"l12_row"``: ``J(W) = lam * sqrt(n) * sum_o ||W[o]||_2`` with ``n = W[o].numel()``: the
  rows of a linear weight ``(out, in)``, weighted ``sqrt(in)`` (for a conv weight the groups
  are whole filters ``W[o, :, ...]``);
* ``"l12_kernel"``: ``J(W) = lam * sqrt(k) * sum_{o, i} ||W[o, i]||_2`` with ``k = kh * kw``:
  the kernels of a conv weight ``(out, in, kh, kw)``;
* ``"none"``: ``J = 0``.

The proximal operator of ``t * J`` is ``prox_{tJ}(z) = argmin_x 1/2 ||x - z||^2 + t J(x)``:
element-wise soft thresholding for l1 and group soft thresholding ("block shrinkage") for the
group norms. These functions are pure tensor maps with an optional ``out``; the optimizers
call them on their own state. `soft_threshold` is the kernel behind ``F.softshrink``, written
in place in one pass: the fastest of the ways of writing it that
``benchmarks/optim_step.py --prox-variants`` times.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = [
    "REGULARIZERS",
    "bregman_init",
    "bregman_prox",
    "group_dims",
    "group_soft_threshold",
    "group_weight",
    "regularizer_subgradient",
    "soft_threshold",
]

#: Names of the regularisers an optimizer's ``reg`` accepts.
REGULARIZERS: tuple[str, ...] = ("l1", "l12_kernel", "l12_row", "none")

# Number of leading dims that index a group, and the smallest ndim a tensor needs for it.
_GROUP_LEAD_DIMS = {"l12_row": 1, "l12_kernel": 2}
_GROUP_MIN_NDIM = {"l12_row": 2, "l12_kernel": 3}


def soft_threshold(x: torch.Tensor, t: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise soft threshold ``S_t(x) = sign(x) * max(|x| - t, 0)``, the prox of ``t||.||_1``.

    Entries with ``|x| <= t`` become exact zeros. ``out`` may be ``x`` itself (in place).

    Args:
        x: Any floating tensor.
        t: Threshold, ``>= 0``. With ``t = 0`` the result equals ``x`` exactly.
        out: Optional output tensor of ``x``'s shape and dtype.

    Returns:
        ``S_t(x)`` (``out`` if given).

    Examples:
        >>> import torch
        >>> from sparsebench.optim import soft_threshold
        >>> soft_threshold(torch.tensor([1.5, -0.25, 0.5, -2.0]), 0.5)
        tensor([ 1.0000, -0.0000,  0.0000, -1.5000])
    """
    if out is None:
        return torch._C._nn.softshrink(x, t)
    return torch._C._nn.softshrink(x, t, out=out)


def group_dims(reg: str, shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """Number of groups and group size of a tensor of ``shape`` under a group regulariser.

    Args:
        reg: ``"l12_row"`` (groups ``x[o]``) or ``"l12_kernel"`` (groups ``x[o, i]``).
        shape: The tensor's shape.

    Returns:
        ``(groups, size)`` with ``groups * size == prod(shape)``.

    Raises:
        ValueError: If ``reg`` is not a group regulariser or ``shape`` has too few dims
            (``l12_row`` needs a matrix, ``l12_kernel`` a conv weight with kernel dims).
    """
    if reg not in _GROUP_LEAD_DIMS:
        raise ValueError(f"Invalid reg: {reg!r} (must be one of 'l12_kernel', 'l12_row')")
    if len(shape) < _GROUP_MIN_NDIM[reg]:
        raise ValueError(
            f"Invalid reg: {reg!r} for a parameter of shape {tuple(shape)} "
            f"(needs at least {_GROUP_MIN_NDIM[reg]} dims)"
        )
    lead = _GROUP_LEAD_DIMS[reg]
    groups = math.prod(shape[:lead])
    size = math.prod(shape[lead:])
    return groups, size


def group_weight(reg: str, shape: torch.Size | tuple[int, ...]) -> float:
    """The group weight ``sqrt(group size)``: ``sqrt(n_in)`` for rows, ``sqrt(kh*kw)`` for kernels.

    Args:
        reg: ``"l12_row"`` or ``"l12_kernel"``.
        shape: The tensor's shape.

    Returns:
        The square root of the group size of `group_dims`.

    Raises:
        ValueError: As `group_dims`.

    Examples:
        >>> from sparsebench.optim.prox import group_weight
        >>> group_weight("l12_row", (300, 784)), group_weight("l12_kernel", (50, 20, 5, 5))
        (28.0, 5.0)
    """
    return _group_weight(reg, tuple(shape))


@functools.lru_cache(maxsize=256)
def _group_weight(reg: str, shape: tuple[int, ...]) -> float:
    # cached per shape: the optimizers ask for it at every step of every tensor
    return math.sqrt(group_dims(reg, shape)[1])


def group_soft_threshold(
    x: torch.Tensor,
    t: float,
    reg: str,
    *,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Group soft threshold ``scale * x_g * max(0, 1 - t / ||x_g||_2)`` for every group g.

    This is ``scale`` times the prox of ``t * sum_g ||x_g||_2`` (no group weight: multiply it
    into ``t``). A group with ``||x_g|| <= t`` becomes exact zeros (a zero group stays zero).

    Args:
        x: The tensor; groups as in `group_dims`.
        t: Threshold, ``>= 0``.
        reg: ``"l12_row"`` or ``"l12_kernel"``.
        scale: A factor folded into the shrink factors, so that ``delta * prox(v)`` costs one
            pass over ``x``.
        out: Optional output tensor of ``x``'s shape and dtype (may be ``x``).

    Returns:
        The shrunk tensor (``out`` if given).

    Examples:
        Each row of a matrix shrunk toward zero by ``t`` in norm; a row of norm at most
        ``t`` becomes exact zeros:

        >>> import torch
        >>> from sparsebench.optim import group_soft_threshold
        >>> group_soft_threshold(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0, "l12_row")
        tensor([[2.4000, 3.2000],
                [0.0000, 0.0000]])
    """
    lead = _GROUP_LEAD_DIMS.get(reg)
    if lead is None or x.ndim < _GROUP_MIN_NDIM[reg]:
        group_dims(reg, x.shape)  # raises the ValueError that names reg and the shape
    # ||x_g|| over the group's trailing dims, kept as size-1 dims so that it broadcasts
    norms = torch.linalg.vector_norm(x, dim=tuple(range(lead, x.ndim)), keepdim=True)
    # max(0, 1 - t / ||x_g||) = S_t(||x_g||) / ||x_g||: three small ops; an all-zero group
    # gives 0 / tiny = 0 (no 0 / 0), and t = 0 gives ||x_g|| / ||x_g|| = 1 exactly
    factor = torch._C._nn.softshrink(norms, t).div_(norms.clamp_min_(torch.finfo(x.dtype).tiny))
    if scale != 1.0:
        factor.mul_(scale)
    if out is None:
        return torch.mul(x, factor)
    if out is x:
        return x.mul_(factor)  # in place: one pass, no write-allocate of a second tensor
    return torch.mul(x, factor, out=out)


def regularizer_subgradient(theta: torch.Tensor, lam: float, reg: str) -> torch.Tensor:
    """A subgradient ``p`` of ``J`` at ``theta`` (a new tensor).

    * l1: ``lam * sign(theta)`` (0 where ``theta`` is 0);
    * group: ``lam * w * theta_g / ||theta_g||`` for nonzero groups, 0 for zero groups;
    * none: zeros.

    Chosen so that ``prox_{delta J}(theta + delta * p) = theta`` (0 is in the subdifferential
    of a zero entry or group), which makes the Bregman initialisation
    ``v_0 = theta_0 / delta + p`` return ``theta_0`` at the first prox.

    Args:
        theta: The point, any floating tensor (for a group ``reg``, one with such groups).
        lam: Regularisation strength ``>= 0``.
        reg: One of `REGULARIZERS`.

    Returns:
        ``p``, a new tensor of ``theta``'s shape.

    Raises:
        ValueError: For a group ``reg`` on a tensor without such groups (`group_dims`).

    Examples:
        >>> import torch
        >>> from sparsebench.optim.prox import regularizer_subgradient
        >>> regularizer_subgradient(torch.tensor([0.5, 0.0, -2.0]), 0.1, "l1")
        tensor([ 0.1000,  0.0000, -0.1000])
    """
    if reg == "none" or lam == 0:
        return torch.zeros_like(theta)
    if reg == "l1":
        return torch.sign(theta).mul_(lam)
    groups, size = group_dims(reg, theta.shape)
    t2 = theta.reshape(groups, size)
    norms = torch.linalg.vector_norm(t2, dim=1, keepdim=True)
    coef = torch.where(norms > 0, lam * math.sqrt(size) / norms, torch.zeros_like(norms))
    return (t2 * coef).view(theta.shape)


def bregman_prox(
    v: torch.Tensor, lam: float, delta: float, reg: str, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The primal variable of a Bregman step: ``theta = prox_{delta J}(delta * v)``.

    Derivation. ``prox_{delta J}(z) = argmin_x 1/2 ||x - z||^2 + delta * J(x)``.

    * l1, ``J = lam ||.||_1``: the problem splits per entry and gives
      ``x = S_{delta lam}(z)``; with ``z = delta * v``,
      ``S_{delta lam}(delta v) = delta * S_lam(v)`` (``delta > 0``), computed as
      ``delta * softshrink(v, lam)``.
    * group, ``J = lam * w * sum_g ||x_g||_2``: the problem splits per group. For one group
      the minimiser points along ``z_g`` (for fixed ``||x_g||`` the inner product with
      ``z_g`` is largest there, Cauchy-Schwarz), and its length ``r >= 0`` minimises
      ``1/2 (r - ||z_g||)^2 + delta lam w r``, a 1-D soft threshold:
      ``r = max(0, ||z_g|| - delta lam w)``. So ``x_g = z_g * max(0, 1 - delta lam w / ||z_g||)``
      (``x_g = 0`` if ``z_g = 0``). With ``z = delta * v``, ``||z_g|| = delta ||v_g||`` and the
      ``delta`` cancels inside the factor:
      ``theta_g = delta * v_g * max(0, 1 - lam * w / ||v_g||)``, one pass over ``v`` with
      ``delta`` folded into the per-group factor.
    * none: ``theta = delta * v``.

    Args:
        v: The subgradient variable.
        lam: Regularisation strength ``>= 0``.
        delta: Elastic-net parameter ``> 0``.
        reg: One of `REGULARIZERS`.
        out: Optional output (usually the parameter itself).

    Returns:
        ``theta`` (``out`` if given).
    """
    if reg == "l1":
        theta = soft_threshold(v, lam, out=out)
        return theta.mul_(delta) if delta != 1.0 else theta
    if reg == "none":
        return torch.mul(v, delta, out=out) if out is not None else v * delta
    return group_soft_threshold(v, lam * group_weight(reg, v.shape), reg, scale=delta, out=out)


def bregman_init(theta: torch.Tensor, lam: float, delta: float, reg: str) -> torch.Tensor:
    """The initial subgradient variable ``v_0 = theta_0 / delta + p`` of a Bregman optimizer.

    ``p`` is the subgradient of J from `regularizer_subgradient`.

    ``v_0`` is a subgradient of the elastic net ``J_delta = J + 1/(2 delta) ||.||^2`` at
    ``theta_0``, so that ``bregman_prox(v_0) = theta_0`` in exact arithmetic. In floating
    point the l1 case computes ``(theta/delta + lam) - lam``, which rounds ``theta`` to the
    precision of ``|theta|/delta + lam`` (a few ulp of ``lam``); see the tests.

    Args:
        theta: The parameter's initial value ``theta_0`` (not modified).
        lam: Regularisation strength ``>= 0``.
        delta: Elastic-net parameter ``> 0``.
        reg: One of `REGULARIZERS`.

    Returns:
        ``v_0``, a new tensor of ``theta``'s shape.

    Examples:
        >>> import torch
        >>> from sparsebench.optim.prox import bregman_init, bregman_prox
        >>> theta = torch.tensor([0.5, 0.0, -0.25])
        >>> v = bregman_init(theta, lam=0.5, delta=1.0, reg="l1")
        >>> v
        tensor([ 1.0000,  0.0000, -0.7500])
        >>> torch.equal(bregman_prox(v, 0.5, 1.0, "l1"), theta)
        True
    """
    v = theta.detach().div(delta) if delta != 1.0 else theta.detach().clone()
    if lam != 0 and reg != "none":
        v.add_(regularizer_subgradient(theta.detach(), lam, reg))
    return v
