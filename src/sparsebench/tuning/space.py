"""Search spaces: ``tune.spaces.<key>.<param>`` checked against the method's own parameters,
and sampled per trial.

A space names parameters of the method configured under ``methods.<key>`` (its registered
``Params`` model decides what exists, so a new method is tunable the moment it is registered),
dotted into nested sections where needed (``optimizer.lr``). Integer parameters are sampled as
integers, floats as floats, anything else only from ``choices``. Both ends of a range (or every
choice) must be values the method accepts, so a bad space fails at load time, not mid-study.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

from sparsebench.config import Range, TuneParams
from sparsebench.errors import UsageError

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
    from sparsebench.methods import method_class

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
    from sparsebench.methods import method_params
    from sparsebench.tuned import overlay

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


def suggest(trial: Any, key: str, cfg: dict[str, Any], space: dict[str, Range]) -> dict[str, Any]:
    """Sample one value per parameter of ``space`` from an Optuna trial; dotted name -> value."""
    values = {}
    for name, rng in space.items():
        kind = check_param(name, key, cfg, name)
        if rng.choices is not None:
            values[name] = trial.suggest_categorical(name, rng.choices)
        elif kind is int:
            values[name] = trial.suggest_int(name, int(rng.low), int(rng.high),
                                             step=int(rng.step or 1), log=rng.log)
        else:
            values[name] = trial.suggest_float(name, rng.low, rng.high, step=rng.step,
                                               log=rng.log)
    return values


def handset_values(key: str, cfg: dict[str, Any], space: dict[str, Range]) -> dict[str, Any]:
    """params.yaml's value of each parameter in ``space`` (the method's default when unset)."""
    from sparsebench.methods import method_params

    dumped = method_params(key, cfg).model_dump()
    values = {}
    for name in space:
        value: Any = dumped
        for part in name.split("."):
            value = value[part]
        values[name] = value
    return values
