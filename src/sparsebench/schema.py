"""The building blocks of the params.yaml schema that methods and suites share.

A method owns its parameter model (``sparsebench.methods``) and builds it from these parts; the
suite schema (`sparsebench.config`) composes the methods' models from the registry. So imports
run one way: config -> methods -> schema, and this module imports no other sparsebench module
but `train` (for the optimizer configuration it builds) and `errors`.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sparsebench.errors import UsageError
from sparsebench.train import OptimConfig, Phase


class Strict(BaseModel):
    """A params section: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class OptimizerParams(Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_size: int = Field(10, gt=0)
    gamma: float = Field(0.1, gt=0, le=1)

    def to_config(self) -> OptimConfig:
        return OptimConfig(**self.model_dump())


class PhaseParams(Strict):
    epochs: int = Field(ge=0)
    batch_size: int = Field(128, gt=0)
    optimizer: OptimizerParams = OptimizerParams()

    def to_phase(self, name: str) -> Phase:
        return Phase(self.epochs, self.batch_size, self.optimizer.to_config(), name)


def validate(model: type[BaseModel], raw: dict[str, Any], prefix: str = "") -> Any:
    """``model.model_validate(raw)`` with the first error as a one-line `UsageError`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(_first_error(exc, model, raw, prefix)) from None


def _first_error(exc: ValidationError, model: type[BaseModel], raw: Any, prefix: str) -> str:
    errors = exc.errors()  # a misspelt key shows as unknown and its real name as missing:
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # the typo
    loc = [str(part) for part in err["loc"]]
    key = (prefix + ".".join(loc)).rstrip(".")
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"{key}: unknown key; {hint}allowed: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{key}: missing; a value is required"
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    if not loc:  # a check across several keys: the message names them
        return f"{key}: {msg}"
    return f"{key}: {err.get('input')!r} is not allowed; {msg}"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
