"""params.yaml: its schema, and validation that fails in one line naming the key.

Every stage validates the whole file before it starts, so a typo stops the pipeline before any
output is touched. Methods declare their own parameter models (see `sparsebench.methods`);
this module holds the sections every suite shares.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from sparsebench.errors import UsageError, unknown_name
from sparsebench.schema import OptimizerParams, PhaseParams, Strict, merge_phase, validate

__all__ = ["OptimizerParams", "Params", "PhaseParams", "Strict", "load_params", "validate"]

if TYPE_CHECKING:
    from sparsebench.accelerate import Options
    from torch import nn


#: a name that becomes a path (``runs/<method key>/``, the suite's experiment): letters,
#: digits, ``_`` and ``-``, starting with a letter or a digit, at most 64 characters
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SAFE_NAME_RULE = ("letters, digits, _ and -, starting with a letter or digit, at most 64 "
                  "characters (it becomes a directory name)")


def check_name(key: str, value: str) -> str:
    """``value`` if it is a safe path component, else a one-line `UsageError` naming ``key``."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        what = "the key" if key == "methods" else "the value"
        raise UsageError(f"{key}: {what} {value!r} is not allowed; allowed: {SAFE_NAME_RULE}")
    return value


class DataParams(Strict):
    """The data set and its splits. ``augment`` is applied to training batches only
    (`sparsebench.data.augment`): ``none``, or ``crop_flip`` (4-pixel pad, random 32x32 crop,
    horizontal flip; for 3x32x32 images, the SAS-ADMM authors' CIFAR-10 training)."""

    dataset: str = "mnist"
    dir: str | None = None
    val_size: int = Field(5000, gt=0)
    split_seed: int = 0
    limit: int | None = Field(None, gt=0)
    # dataset: synthetic only (tests and smoke runs of the GPU suites): image shape and classes
    synthetic_shape: tuple[Annotated[int, Field(gt=0)], ...] = (1, 8, 8)
    synthetic_classes: int = Field(4, ge=2)
    augment: Literal["none", "crop_flip"] = "none"


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


Compression = Annotated[float, Field(gt=1, allow_inf_nan=False)]
Sparsity = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


class LevelsParams(Strict):
    """The suite's operating points (`sparsebench.levels`): compression ratios over all prunable
    weights, or target sparsities (one of the two), strictly increasing; the classifier floor
    of the per-layer rule; the tolerance a calibrated point must meet (relative, on the
    compression ratio)."""

    compression: list[Compression] | None = None
    sparsity: list[Sparsity] | None = None
    classifier_density: float = Field(0.1, ge=0, lt=1)
    tolerance: float = Field(0.05, gt=0, lt=1)

    @field_validator("compression", "sparsity")
    @classmethod
    def _increasing(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and not values:
            raise ValueError("the list is empty; allowed: one level or more")
        if values is not None and any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise ValueError("the levels must be strictly increasing")
        return values

    @model_validator(mode="after")
    def _one_unit(self) -> LevelsParams:
        if (self.compression is None) == (self.sparsity is None):
            raise ValueError("give the levels as compression or as sparsity (exactly one)")
        return self

    @property
    def unit(self) -> str:
        return "compression" if self.compression is not None else "sparsity"

    def ratios(self, subset: list[float] | None = None) -> list[float]:
        """The compression ratios of the levels (of ``subset``, in the suite's unit)."""
        values = subset if subset is not None else (self.compression or self.sparsity or [])
        return [v if self.unit == "compression" else 1.0 / (1.0 - v) for v in values]


class ExecutionParams(Strict):
    """How a stage runs its independent runs: ``threads`` torch threads per run (fixed here, so
    results do not depend on the machine's core count) and ``workers`` runs side by side
    (null: cores // threads on the CPU, one on CUDA). ``fill_idle``: a worker left idle by a
    stage's last runs starts the next method's runs, which their own stage resumes
    (`sparsebench.stages`); results are the same either way."""

    threads: int = Field(1, ge=1)
    workers: int | None = Field(None, ge=1)
    fill_idle: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (sparsebench.accelerate)
    channels_last: bool = False  # NHWC weights and batches (convolutional models only)
    compile: bool = False  # train through torch.compile(model)

    def options(self) -> Options:
        """The training options (`sparsebench.accelerate`)."""
        from sparsebench.accelerate import Options

        return Options(self.precision, self.channels_last, self.compile)


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
    """The whole file. Rules that need the registries or the data set's size (names, model
    arguments, ``val_size``, the device, each method's levels, retrain override and budget)
    are checked by `load_params` after this model."""

    suite: str = "default"
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    device: str = "auto"
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    pretrain: PhaseParams
    retrain: PhaseParams
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    levels: LevelsParams
    budget: int | None = Field(None, ge=1)  # epochs per run: pretrain share + prune + retrain
    execution: ExecutionParams = ExecutionParams()
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
    from sparsebench.train import resolve_device
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
    check_name("suite", params.suite)
    for key in params.methods:
        check_name("methods", key)
    resolve_device(params.device)
    n_train = _check_data(params.data)
    if params.data.dataset not in (*DATASETS, SYNTHETIC):
        raise unknown_name("data.dataset", params.data.dataset, (*DATASETS, SYNTHETIC))
    if params.model.name not in MODELS:
        raise unknown_name("model.name", params.model.name, MODELS)
    model = _check_model_args(params)
    from sparsebench.accelerate import check as check_options

    check_options(params.execution.options(), resolve_device(params.device), model)
    methods = {name: method_params(name, cfg or {}) for name, cfg in params.methods.items()}
    check_spaces(params.tune, params.methods)
    if tuned:
        for name, cfg in params.methods.items():
            methods[name] = _with_tuned(name, cfg or {}, methods[name])
    for name, method in methods.items():
        if hasattr(method, "targets"):
            method.targets(model, name)  # a layer name the model does not have is refused
        _check_levels(params.levels, name, method)
        _check_seeds(params.seeds, name, method)
        _check_progressive(name, method)
        merge_phase(params.retrain, method.retrain.model_dump(), prefix=f"methods.{name}.retrain.")
        check_budget(params, name, method, n_train)
    return params, methods


def _check_data(data: DataParams) -> int:
    """``val_size`` against the data set's training set; return the training samples a run
    sees (after the validation split and ``limit``)."""
    from sparsebench.data import SYNTHETIC, get_spec

    _check_augment(data)
    if data.dataset == SYNTHETIC:
        return data.limit or 256  # the synthetic training set (`stages.prepare`)
    pool = get_spec(data.dataset).train_size
    if data.val_size >= pool:
        raise UsageError(f"data.val_size: {data.val_size} is not allowed; {data.dataset} has "
                         f"{pool} training samples; allowed: 1 .. {pool - 1}")
    return min(pool - data.val_size, data.limit or pool)


def _check_augment(data: DataParams) -> None:
    """``crop_flip`` needs images of `CROP_FLIP_SHAPE` (an unknown data set is refused later,
    by its own rule)."""
    from sparsebench.data import DATASETS, SYNTHETIC
    from sparsebench.data.augment import CROP_FLIP_SHAPE

    if data.augment == "none":
        return
    if data.dataset == SYNTHETIC:
        shape = tuple(data.synthetic_shape)
    elif data.dataset in DATASETS:
        shape = tuple(DATASETS[data.dataset].shape)
    else:
        return
    if shape != CROP_FLIP_SHAPE:
        need = "x".join(map(str, CROP_FLIP_SHAPE))
        raise UsageError(f"data.augment: {data.augment!r} is not allowed for data.dataset "
                         f"{data.dataset} (images {'x'.join(map(str, shape))}); allowed: none, "
                         f"or a data set of {need} images (cifar10)")


def check_budget(params: Params, key: str, method: Any, n_train: int) -> None:
    """Refuse ``methods.<key>`` when a run of it (pretrain share + prune + retrain) is over
    ``budget``."""
    from sparsebench.suite import epoch_budget

    if params.budget is None:
        return
    budget = epoch_budget(params, key, method, n_train)
    if budget["total"] > params.budget:
        raise UsageError(
            f"methods.{key}: {budget['total']} epochs a run ({budget['pretrain']} pretrain + "
            f"{budget['prune']} prune + {budget['retrain']} retrain) is over the suite's "
            f"budget; allowed: at most budget: {params.budget}")


def _check_seeds(seeds: list[int], key: str, method: Any) -> None:
    """A method's own ``seeds``: distinct members of the suite's ``seeds``."""
    if method.seeds is None:
        return
    allowed = ", ".join(map(str, seeds))
    for seed in method.seeds:
        if seed not in seeds:
            raise UsageError(f"methods.{key}.seeds: {seed} is not a seed of this suite; "
                             f"allowed: a subset of {allowed} (seeds)")
    if len(set(method.seeds)) != len(method.seeds):
        raise UsageError(f"methods.{key}.seeds: {method.seeds} repeats a seed; allowed: "
                         f"distinct seeds of {allowed} (seeds)")


def _check_progressive(key: str, method: Any) -> None:
    """A progressive series prunes further from its last level: a target-driven method that
    starts from a trained model."""
    from sparsebench.methods import build_method

    if not method.progressive:
        return
    instance = build_method(key, method)
    if instance.kind() != "target" or not instance.from_pretrained:
        raise UsageError(f"methods.{key}.progressive: true is not allowed for {instance.name} "
                         "(its sparsity is not a target it is given, or it trains from scratch); "
                         "allowed: a target-driven method that starts from the pretrained model "
                         "(admm, admm_l1, sas_admm, magnitude, gmp, random)")


def _check_levels(levels: LevelsParams, key: str, method: Any) -> None:
    """A method's own ``levels`` must be a subset of the suite's; a per-layer rule needs
    per-layer scope."""
    suite = levels.compression or levels.sparsity or []
    initial = getattr(method, "initial_sparsity", 0.0)
    lowest = 1.0 - 1.0 / min(levels.ratios(method.levels))
    if initial > lowest:
        raise UsageError(f"methods.{key}.initial_sparsity: {initial:g} is not allowed; it is "
                         f"above the lowest level's sparsity {lowest:.4g}; allowed: 0 .. "
                         f"{lowest:.4g}")
    for value in method.levels or []:
        if not any(math.isclose(value, v, rel_tol=1e-9) for v in suite):
            raise UsageError(f"methods.{key}.levels: {value:g} is not a level of this suite; "
                             f"allowed: {', '.join(f'{v:g}' for v in suite)} "
                             f"(levels.{levels.unit})")
    if getattr(method, "scope", None) == "global":
        raise UsageError(f"methods.{key}.scope: 'global' is not allowed; the suite's level rule "
                         "is per layer with a classifier floor (sparsebench.levels); allowed: "
                         "layer")


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


