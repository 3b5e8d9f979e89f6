"""Sparsity-inducing optimizers, usable in any PyTorch training loop.

* `GRDA`: generalized regularized dual averaging (Chao et al., NeurIPS 2020);
* `LinBreg` (with optional momentum) and `AdaBreg`: Bregman learning (Bungert et al.,
  JMLR 2022), with `sparse_init` to start sparse;
* `ProxSGD`: proximal SGD, the Bregman paper's baseline.

All are `torch.optim.Optimizer` subclasses: hyperparameters live in the parameter groups (so
schedulers and per-layer groups work) and all state in ``optimizer.state`` (so
``state_dict()`` checkpoints it). `param_groups` regularises the prunable weights and leaves
biases and norm layers alone. `build_optimizer` builds one by its name in `OPTIMIZERS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sparsebench.optim.adabreg import AdaBreg
from sparsebench.optim.grda import GRDA
from sparsebench.optim.groups import param_groups, prunable_parameters
from sparsebench.optim.init import sparse_init
from sparsebench.optim.linbreg import LinBreg
from sparsebench.optim.prox import group_soft_threshold, soft_threshold
from sparsebench.optim.proxsgd import ProxSGD
from sparsebench.util.errors import unknown_name

__all__ = [
    "GRDA",
    "OPTIMIZERS",
    "AdaBreg",
    "LinBreg",
    "ProxSGD",
    "build_optimizer",
    "group_soft_threshold",
    "param_groups",
    "prunable_parameters",
    "soft_threshold",
    "sparse_init",
]

#: The optimizers by the name that params.yaml and Optuna use.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adabreg": AdaBreg,
    "grda": GRDA,
    "linbreg": LinBreg,
    "proxsgd": ProxSGD,
}


def build_optimizer(name: str, params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name``.

    Args:
        name: A key of `OPTIMIZERS`.
        params: Parameters or parameter groups.
        **kwargs: The optimizer's hyperparameters.

    Returns:
        The optimizer, an instance of ``OPTIMIZERS[name]``.

    Raises:
        sparsebench.util.errors.UsageError: For an unknown name (a ``ValueError`` listing the
            known ones).
        ValueError: For a bad hyperparameter.

    Examples:
        >>> import torch
        >>> from sparsebench.optim import build_optimizer
        >>> model = torch.nn.Linear(4, 2)
        >>> build_optimizer("grda", model.parameters(), lr=0.1, c=0.005, mu=0.55).defaults
        {'lr': 0.1, 'c': 0.005, 'mu': 0.55}
    """
    if name not in OPTIMIZERS:
        raise unknown_name("optimizer.name", name, OPTIMIZERS)
    return OPTIMIZERS[name](params, **kwargs)
