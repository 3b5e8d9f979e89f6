"""Parameter groups: regularise the prunable weights, leave biases and norm layers alone.

The prunable parameters are those of ALGORITHMS.md section 0 (`sparsebench.core.metrics`): the
``weight`` of every ``nn.Linear`` and ``nn.Conv*``. Everything else (biases, normalisation
parameters, embeddings, ...) goes to an unregularised group, as in the Bregman authors'
experiments (plain SGD / Adam for biases, ``delta = 1``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sparsebench.core.metrics import prunable_modules

__all__ = ["param_groups", "prunable_parameters"]


def _weight_parameter(module: nn.Module) -> nn.Parameter | None:
    """The parameter that stores a prunable module's weight (``weight_orig`` if pruned)."""
    orig = module._parameters.get("weight_orig")
    return orig if orig is not None else module._parameters.get("weight")


def prunable_parameters(
    model: nn.Module,
) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """Split a model's parameters into linear weights, conv weights and the rest.

    Each parameter appears once (shared weights are deduplicated), in
    ``model.named_modules()`` / ``model.parameters()`` order. A module pruned with
    ``torch.nn.utils.prune`` contributes its ``weight_orig``.

    Args:
        model: Any model.

    Returns:
        ``(linear_weights, conv_weights, others)``. For gRDA, which has no ``reg``, use e.g.
        ``GRDA([{"params": lin + conv}, {"params": others, "c": 0.0}], lr, c, mu)``.

    Examples:
        >>> import torch
        >>> from sparsebench.optim import prunable_parameters
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
        ...                             torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
        >>> linear, conv, others = prunable_parameters(model)
        >>> [tuple(p.shape) for p in linear], [tuple(p.shape) for p in conv], len(others)
        ([(10, 2704)], [(4, 1, 3, 3)], 4)
    """
    seen: set[int] = set()
    linear: list[nn.Parameter] = []
    conv: list[nn.Parameter] = []
    for _, module in prunable_modules(model):
        weight = _weight_parameter(module)
        if weight is None or id(weight) in seen:
            continue
        seen.add(id(weight))
        (linear if isinstance(module, nn.Linear) else conv).append(weight)
    others = [p for p in model.parameters() if id(p) not in seen]
    return linear, conv, others


def param_groups(
    model: nn.Module,
    *,
    lam: float,
    reg_linear: str = "l1",
    reg_conv: str = "l1",
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Parameter groups for `LinBreg`, `AdaBreg` and `ProxSGD`.

    ``LinBreg(param_groups(model, lam=0.5, reg_conv="l12_kernel"), lr=0.1)``
    regularises the linear weights with l1 and the conv kernels with the group norm, and
    steps biases and norm-layer parameters without a regulariser.

    Args:
        model: Any model.
        lam: Regularisation strength of the prunable weights.
        reg_linear: ``reg`` of the ``nn.Linear`` weights (``"l1"`` or ``"l12_row"``, ...).
        reg_conv: ``reg`` of the ``nn.Conv*`` weights (``"l1"``, ``"l12_kernel"``, ...).
        **kwargs: Further hyperparameters of the regularised groups (``delta``, ``lr``,
            ``momentum``, ...).

    Returns:
        Up to three groups, empty ones left out: linear weights, conv weights (each with
        ``lam``, its ``reg`` and ``kwargs``), and the rest with ``lam = 0``,
        ``reg = "none"``, ``delta = 1`` (`ProxSGD` ignores ``delta``).

    Examples:
        >>> import torch
        >>> from sparsebench.optim import LinBreg, param_groups
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
        ...                             torch.nn.Linear(4 * 26 * 26, 10))
        >>> groups = param_groups(model, lam=0.5, reg_conv="l12_kernel")
        >>> [(len(g["params"]), g["lam"], g["reg"]) for g in groups]
        [(1, 0.5, 'l1'), (1, 0.5, 'l12_kernel'), (2, 0.0, 'none')]
        >>> opt = LinBreg(groups, lr=0.1)
    """
    linear, conv, others = prunable_parameters(model)
    groups = [
        {"params": linear, "lam": lam, "reg": reg_linear, **kwargs},
        {"params": conv, "lam": lam, "reg": reg_conv, **kwargs},
        {"params": others, "lam": 0.0, "reg": "none", "delta": 1.0},
    ]
    return [g for g in groups if g["params"]]
