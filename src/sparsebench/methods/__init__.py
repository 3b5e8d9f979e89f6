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
    """The registered class for the entry ``methods.<key>`` of params.yaml."""
    name = cfg.get("method") or key
    if name not in METHODS:
        field = f"methods.{key}.method" if cfg.get("method") else f"methods.{key}"
        raise unknown_name(field, name, METHODS)
    return METHODS[name]


def method_params(key: str, cfg: dict[str, Any]) -> MethodParams:
    """Validate ``methods.<key>`` against its method's parameter model."""
    if not isinstance(cfg, dict):
        raise UsageError(f"methods.{key}: {cfg!r} is not allowed; a mapping of parameters")
    return validate(method_class(key, cfg).Params, cfg, prefix=f"methods.{key}.")


def build_method(key: str, params: MethodParams) -> Method:
    """An instance of the method configured under ``methods.<key>``."""
    return method_class(key, params.model_dump())(params, key)
