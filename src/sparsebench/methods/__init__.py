"""The registry of pruning methods, by name.

params.yaml and the CLI refer to methods by name; an unknown name is a `UsageError` listing
the known ones. Tests are parametrized over `METHODS`, so a new method is tested the moment it
is registered here.
"""

from __future__ import annotations

from typing import Any

from sparsebench.core.schema import validate
from sparsebench.methods.admm import ADMM, ADMML1Pruning, ADMMPruning
from sparsebench.methods.base import Context, Method, MethodParams
from sparsebench.methods.baselines import Dense, Magnitude, Random
from sparsebench.methods.gmp import GMP
from sparsebench.methods.sas_admm import SASADMMPruning
from sparsebench.methods.sparse_training import (
    AdaBregMethod,
    GRDAMethod,
    LinBregMethod,
    ProxSGDMethod,
)
from sparsebench.util.errors import UsageError, unknown_name

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (Dense, Magnitude, GMP, Random, ADMMPruning, ADMML1Pruning, SASADMMPruning,
              GRDAMethod, LinBregMethod, AdaBregMethod, ProxSGDMethod)
}

__all__ = ["ADMM", "METHODS", "Context", "Method", "MethodParams", "build_method", "method_params"]


def method_class(key: str, cfg: dict[str, Any]) -> type[Method]:
    """The registered class for the entry ``methods.<key>`` of params.yaml.

    Args:
        key: The entry's name under ``methods:``: the method's own name, or an instance name
            of the user's when ``cfg`` names the method.
        cfg: The entry's parameters; its ``method`` key, when set, names the method.

    Returns:
        The method's class, a value of `METHODS`.

    Raises:
        sparsebench.util.errors.UsageError: For a name that is not registered, listing the
            registered ones.

    Examples:
        >>> from sparsebench.methods import method_class
        >>> method_class("gmp", {}).__name__, method_class("gmp_90", {"method": "gmp"}).__name__
        ('GMP', 'GMP')
    """
    name = cfg.get("method") or key
    if name not in METHODS:
        field = f"methods.{key}.method" if cfg.get("method") else f"methods.{key}"
        raise unknown_name(field, name, METHODS)
    return METHODS[name]


def method_params(key: str, cfg: dict[str, Any]) -> MethodParams:
    """Validate ``methods.<key>`` against its method's parameter model.

    Args:
        key: The entry's name under ``methods:`` (see `method_class`).
        cfg: The entry's parameters, as params.yaml gives them.

    Returns:
        The parameters, an instance of the method's ``Params`` with the defaults filled in.

    Raises:
        sparsebench.util.errors.UsageError: For a ``cfg`` that is not a mapping, an unknown
            method, an unknown key or a value out of its range: one line naming the key.

    Examples:
        >>> from sparsebench.methods import method_params
        >>> params = method_params("gmp_90", {"method": "gmp", "target_sparsity": 0.9})
        >>> type(params).__name__, params.target_sparsity, params.epochs
        ('GMPParams', 0.9, 10)
        >>> method_params("gmp", {"target_sparsity": 1.5})
        Traceback (most recent call last):
        ...
        sparsebench.util.errors.UsageError: methods.gmp.target_sparsity: 1.5 is not allowed;
        input should be less than 1
    """
    if not isinstance(cfg, dict):
        raise UsageError(f"methods.{key}: {cfg!r} is not allowed; a mapping of parameters")
    return validate(method_class(key, cfg).Params, cfg, prefix=f"methods.{key}.")


def build_method(key: str, params: MethodParams) -> Method:
    """An instance of the method configured under ``methods.<key>``.

    Args:
        key: The entry's name under ``methods:`` (see `method_class`); the instance keeps it
            as ``method.key``.
        params: Its parameters, as `method_params` returns them.

    Returns:
        The method, ready for its prune phase (`Method.prune`).

    Raises:
        sparsebench.util.errors.UsageError: For a method name that is not registered.

    Examples:
        An instance name of the user's, for the registered method ``magnitude``; its prune
        phase reaches the target sparsity over the prunable weights:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.methods import Context, build_method, method_params
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> params = method_params("mag_75", {"method": "magnitude", "target_sparsity": 0.75})
        >>> method = build_method("mag_75", params)
        >>> method.name, method.key, method.kind()
        ('magnitude', 'mag_75', 'target')
        >>> method.prune(model, ctx)
        []
        >>> sparsity_summary(model)["sparsity"]
        0.75
    """
    return method_class(key, params.model_dump())(params, key)
