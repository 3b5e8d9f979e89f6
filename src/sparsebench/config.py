"""params.yaml: its schema, and validation that fails in one line naming the key.

Every stage validates the whole file before it starts, so a typo stops the pipeline before any
output is touched. Methods declare their own parameter models (see `sparsebench.methods`);
this module holds the sections every suite shares.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sparsebench.errors import UsageError, unknown_name
from sparsebench.train import OptimConfig, Phase

if TYPE_CHECKING:
    from torch import nn


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


class DataParams(Strict):
    dataset: str = "mnist"
    dir: str | None = None
    val_size: int = Field(5000, gt=0)
    split_seed: int = 0
    limit: int | None = Field(None, gt=0)
    # dataset: synthetic only (tests and smoke runs of the GPU suites): image shape and classes
    synthetic_shape: tuple[Annotated[int, Field(gt=0)], ...] = (1, 8, 8)
    synthetic_classes: int = Field(4, ge=2)


class ModelParams(Strict):
    name: str = "mlp"
    args: dict[str, Any] = {}


class EvaluateParams(Strict):
    """What evaluate measures beyond the test metrics: CPU latency, dense against sparse."""

    latency_batch_sizes: list[Annotated[int, Field(gt=0)]] = [1, 256]  # [] turns latency off
    latency_repeats: int = Field(50, gt=0)


class TrackingParams(Strict):
    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None


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
    by `sparsebench.tuning.space.check_spaces`.
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
    spaces: dict[str, dict[str, Range]] = {}

    @model_validator(mode="after")
    def _grace(self) -> TuneParams:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period {self.grace_period} <= heartbeat_interval "
                             f"{self.heartbeat_interval}; allowed: grace_period > "
                             "heartbeat_interval")
        return self


class Params(Strict):
    suite: str = "default"
    seeds: list[int] = Field(min_length=1)
    device: str = "auto"
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    pretrain: PhaseParams
    retrain: PhaseParams
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    tune: TuneParams = TuneParams()

    @field_validator("seeds")
    @classmethod
    def _unique(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds


def load_params(path: str | Path = "params.yaml", *,
                tuned: bool = True) -> tuple[Params, dict[str, Any]]:
    """Read and validate params.yaml; return the shared sections and each method's params.

    Args:
        path: the params file.
        tuned: lay ``tuned/<key>.yaml`` over ``methods.<key>`` where it exists (see
            `sparsebench.tuned`); tuning reads the hand-set values (False).

    Raises:
        UsageError: one line naming the key, the value and what is allowed.
    """
    from sparsebench.data import DATASETS, SYNTHETIC
    from sparsebench.methods import method_params
    from sparsebench.models import MODELS
    from sparsebench.tuning.space import check_spaces

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"params: {str(path)!r} does not exist; allowed: a params file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"params: {str(path)!r} cannot be read ({exc})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise UsageError(f"params: {str(path)!r} is not valid YAML{at}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"params: {str(path)!r} must hold a mapping of sections, not {raw!r:.40}")
    params = validate(Params, raw)
    if params.data.dataset not in (*DATASETS, SYNTHETIC):
        raise unknown_name("data.dataset", params.data.dataset, (*DATASETS, SYNTHETIC))
    if params.model.name not in MODELS:
        raise unknown_name("model.name", params.model.name, MODELS)
    model = _check_model_args(params)
    methods = {name: method_params(name, cfg or {}) for name, cfg in params.methods.items()}
    check_spaces(params.tune, params.methods)
    if tuned:
        for name, cfg in params.methods.items():
            methods[name] = _with_tuned(name, cfg or {}, methods[name])
    for name, method in methods.items():
        if hasattr(method, "targets"):
            method.targets(model, name)  # a layer name the model does not have is refused
    return params, methods


def _with_tuned(key: str, cfg: dict[str, Any], handset: Any) -> Any:
    """``methods.<key>`` with ``tuned/<key>.yaml`` laid over it, when the file exists."""
    from sparsebench.methods import method_params
    from sparsebench.tuned import overlay, read_tuned, tuned_path
    from sparsebench.tuning.space import check_param

    tuned = read_tuned(key)
    if tuned is None:
        return handset
    for name in tuned.params:
        check_param(f"{tuned_path(key)}: params.{name}", key, cfg, name)
    try:
        return method_params(key, overlay(cfg, tuned.params))
    except UsageError as exc:
        raise UsageError(f"{tuned_path(key)}: {exc}") from None


def _check_model_args(params: Params) -> nn.Module:
    """Build the model on the meta device (no memory, no time) and return it: ``model.args``
    (and each method's ``layer_sparsity`` names, in `load_params`) are checked before anything
    runs (an unknown or invalid argument is a `UsageError`)."""
    import torch

    from sparsebench.models import build_model

    shape = {}
    if params.data.dataset == "synthetic":
        channels, *size = params.data.synthetic_shape
        shape = {"in_channels": channels, "image_size": size[0] if size else 1,
                 "num_classes": params.data.synthetic_classes}
    with torch.device("meta"):
        return build_model(params.model.name, **{**shape, **params.model.args})


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
