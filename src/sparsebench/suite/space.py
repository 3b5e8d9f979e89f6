"""The ``tune`` section's schema (`Range`, `TuneParams`) and the checks of its search spaces
against the methods' parameter models: each space names a configured method key, each
parameter exists in that method's model (dotted into nested sections), and the method accepts
both ends of each range. `sparsebench.suite.load.load_params` runs them, so
``sparsebench check-params`` refuses a bad space without Optuna. `handset_values` gives
params.yaml's own value of each parameter of a space (a study's first trial);
`sparsebench.tuning.space` turns a checked space into a trial's suggestions.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from sparsebench.core.schema import Strict
from sparsebench.methods import method_class, method_params
from sparsebench.suite.tuned import overlay
from sparsebench.util.errors import UsageError


class Range(Strict):
    """One parameter's search range: ``low``..``high`` (log-uniform when ``log``, on a grid of
    ``step`` when given; integers for an integer parameter), or a list of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _nonempty(self) -> Range:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("choices goes alone; allowed: choices, or low and high")
            if not self.choices:
                raise ValueError("choices is empty; allowed: a list of one value or more")
            return self
        if self.low is None or self.high is None:
            raise ValueError("low and high are both needed; allowed: low < high, or choices")
        if self.low >= self.high:
            raise ValueError(f"low {self.low} >= high {self.high} is an empty or inverted range; "
                             "allowed: low < high")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got low {self.low}; allowed: 0 < low < high")
        if self.log and self.step:
            raise ValueError("log and step exclude each other; allowed: one of them")
        return self


class PrunerParams(Strict):
    """Optuna's MedianPruner on the per-epoch validation accuracy (single objective only)."""

    n_startup_trials: int = Field(5, ge=0)  # trials that finish before any is pruned
    n_warmup_steps: int = Field(0, ge=0)  # epochs of a trial before it may be pruned


class TuneParams(Strict):
    """``sparsebench tune``: the objective, the budget, the storage and each method's space.

    ``spaces`` maps a key under ``methods:`` to its parameters' ranges; a parameter may be
    dotted into a nested section (``optimizer.lr``). Checked against each method's parameters
    by `check_spaces`.
    """

    objective: Literal["accuracy_at_sparsity", "pareto"] = "accuracy_at_sparsity"
    target_sparsity: float = Field(0.95, gt=0, lt=1)
    trials: int = Field(20, ge=1)  # finished trials (complete or pruned) the study ends with
    workers: int = Field(1, ge=1)  # processes on this machine
    seed: int | None = None  # the suite seed trials train with; null: the first of seeds
    storage: str | None = None  # any SQLAlchemy URL; null: sqlite:///<repo>/tuning/optuna.db
    connect_timeout: int = Field(5, ge=1, le=9)  # seconds to reach the storage
    heartbeat_interval: int = Field(10, ge=1)  # seconds between a running trial's heartbeats
    grace_period: int = Field(30, ge=1)  # seconds without one before the trial is failed
    pruner: PrunerParams = PrunerParams()
    spaces: dict[str, dict[str, Range]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _grace(self) -> TuneParams:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period {self.grace_period} <= heartbeat_interval "
                             f"{self.heartbeat_interval}; allowed: grace_period > "
                             "heartbeat_interval")
        return self


Kind = type  # int, float, or object (anything else: choices only)


SCALARS = (type(None), bool, int, float, str)  # what Optuna stores as a categorical choice


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def check_param(where: str, key: str, cfg: dict[str, Any], dotted: str) -> Kind:
    """The kind of ``dotted`` in the parameters of ``methods.<key>``; refuse unknown names.

    Raises:
        UsageError: naming ``where``, the parameter and the ones that exist at that level.
    """

    model: type[BaseModel] = method_class(key, cfg).Params
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields or part == "method":
            allowed = [f for f in fields if f != "method"]
            close = difflib.get_close_matches(part, allowed, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"{where}: unknown parameter {'.'.join(parts[:i + 1])!r} of method "
                             f"{method_class(key, cfg).name}; {hint}allowed: {', '.join(allowed)}")
        annotation = _strip_optional(fields[part].annotation)
        if i == len(parts) - 1:
            if _is_model(annotation):
                raise UsageError(f"{where}: {dotted!r} is a section; allowed: one of its keys "
                                 f"({', '.join(f'{dotted}.{f}' for f in annotation.model_fields)})")
            return annotation if annotation in (int, float) else object
        if not _is_model(annotation):
            raise UsageError(f"{where}: {part!r} has no keys inside; allowed: {part}")
        model = annotation
    raise AssertionError("unreachable")


def _endpoints(rng: Range) -> list[Any]:
    return list(rng.choices) if rng.choices is not None else [rng.low, rng.high]


def check_range(where: str, key: str, cfg: dict[str, Any], name: str, rng: Range) -> None:
    """The range fits the parameter's kind, and the method accepts both ends (or each choice)."""

    kind = check_param(where, key, cfg, name)
    if rng.choices is not None:
        bad = [c for c in rng.choices if not isinstance(c, SCALARS)]
        if bad:
            raise UsageError(f"{where}: choice {bad[0]!r} is not allowed; allowed: numbers, "
                             "strings, booleans or null")
    elif kind is object:
        raise UsageError(f"{where}: {name!r} is not a number, so low/high is not allowed; "
                         "allowed: choices")
    elif kind is int and not all(float(v).is_integer() for v in (rng.low, rng.high,
                                                                 rng.step or 1)):
        raise UsageError(f"{where}: {name!r} is an integer, got low {rng.low}, high {rng.high}, "
                         f"step {rng.step}; allowed: whole numbers")
    for value in _endpoints(rng):
        value = int(value) if kind is int and rng.choices is None else value
        try:
            method_params(key, overlay(cfg, {name: value}))
        except UsageError as exc:
            raise UsageError(f"{where}: {value!r} is not allowed by methods.{key} "
                             f"({exc})") from None


def check_spaces(tune: TuneParams, methods: dict[str, dict[str, Any] | None]) -> None:
    """Every space names a configured method key, and parameters that method has.

    Raises:
        UsageError: one line naming the key under ``tune.spaces``, the value and what is allowed.
    """
    for key, space in tune.spaces.items():
        if key not in methods:
            raise UsageError(f"tune.spaces.{key}: unknown method key; allowed: "
                             f"{', '.join(methods)} (the keys under methods:)")
        if not space:
            raise UsageError(f"tune.spaces.{key}: {{}} is not allowed; allowed: a mapping of one "
                             "parameter or more to its range")
        for name, rng in space.items():
            check_range(f"tune.spaces.{key}.{name}", key, methods[key] or {}, name, rng)


def handset_values(key: str, cfg: dict[str, Any], space: dict[str, Range]) -> dict[str, Any]:
    """params.yaml's value of each parameter in ``space`` (the method's default when unset)."""

    dumped = method_params(key, cfg).model_dump()
    values = {}
    for name in space:
        value: Any = dumped
        for part in name.split("."):
            value = value[part]
        values[name] = value
    return values
