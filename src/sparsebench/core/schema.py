"""The building blocks of the params.yaml schema that methods and suites share.

A method owns its parameter model (``sparsebench.methods``) and builds it from these parts; the
suite schema (`sparsebench.suite.params`) composes the methods' models from the registry. So
imports run one way: suite -> methods -> schema, and this module imports no other sparsebench
module but `util.errors` (`core.train` imports it: `OptimizerParams` and `Phase` are the one
optimizer and phase configuration types).

Every number must be finite (``allow_inf_nan=False``), and a rule between two keys is a
validator of the model that holds both, so ``sparsebench check-params`` sees all of them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sparsebench.util.errors import UsageError


class Strict(BaseModel):
    """A params section: unknown keys are refused, and so are infinite and NaN numbers."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Beta = Annotated[float, Field(ge=0, lt=1)]


class OptimizerParams(Strict):
    """The optimizer and LR schedule of a training phase (`sparsebench.core.train.make_optimizer`),
    with torch's defaults: ``momentum`` and ``nesterov`` are SGD's, ``betas`` Adam's.

    Schedules: ``constant``; ``cosine`` to zero over the phase; ``step``: lr x ``gamma`` every
    ``step_size`` epochs, or at each epoch of ``milestones`` when given (torch's MultiStepLR;
    the SAS-ADMM code's retrain: lr 0.1, x0.1 at epochs 100 and 150).

    Rules: ``nesterov`` needs ``momentum`` > 0 (Nesterov's step is a momentum step);
    ``milestones`` are increasing epochs >= 1, for ``schedule: step`` only.
    """
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_size: int = Field(10, gt=0)
    gamma: float = Field(0.1, gt=0, le=1)
    milestones: tuple[Annotated[int, Field(ge=1)], ...] = ()

    @model_validator(mode="after")
    def _nesterov(self) -> OptimizerParams:
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: true needs momentum > 0 (got momentum 0); allowed: "
                             "nesterov: false, or a momentum in (0, 1)")
        if self.milestones and self.schedule != "step":
            raise ValueError(f"milestones {list(self.milestones)} need schedule: step (got "
                             f"{self.schedule}); allowed: milestones: [] with this schedule")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError(f"milestones {list(self.milestones)} are not increasing; allowed: "
                             "epochs in increasing order, e.g. [100, 150]")
        return self


@dataclass
class Phase:
    """One training phase: what to train, on what, for how long, and how."""
    epochs: int
    batch_size: int
    optim: OptimizerParams = field(default_factory=OptimizerParams)
    name: str = "train"


class PhaseParams(Strict):
    epochs: int = Field(ge=0)
    batch_size: int = Field(128, gt=0)
    optimizer: OptimizerParams = OptimizerParams()

    def to_phase(self, name: str) -> Phase:
        return Phase(self.epochs, self.batch_size, self.optimizer, name)


def merge_phase(shared: PhaseParams, override: dict[str, Any], prefix: str) -> PhaseParams:
    """``shared`` with ``override`` (a method's ``retrain:``, any subset) laid over it, checked
    by the same rules as the shared section; an error names the key under ``prefix``."""
    merged = shared.model_dump()
    override = {k: v for k, v in override.items() if v is not None}
    merged["optimizer"].update(override.pop("optimizer", {}))
    merged.update(override)
    return validate(PhaseParams, merged, prefix=prefix)


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
    if not loc or isinstance(err.get("input"), dict):  # a rule across keys: msg names them
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
