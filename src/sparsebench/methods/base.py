"""What every pruning method is: its parameters, its prune phase, its epoch budget.

A method receives the model (pretrained, or freshly initialised when it trains from scratch),
runs its prune phase and leaves the model with its masks applied in the
``torch.nn.utils.prune`` form (`sparsebench.core.sparsity.apply_masks`). Masked retrain, evaluation
and tracking are shared by all methods and live outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from sparsebench.core.checkpoints import EpochCheckpoint, Resume
from sparsebench.core.metrics import prunable_modules
from sparsebench.core.schema import OptimizerParams, Strict
from sparsebench.data.augment import Augment
from sparsebench.data.stream import Split
from sparsebench.util.errors import UsageError


class RetrainOverride(Strict):
    """A method's changes to the shared ``retrain`` section (any subset of it)."""

    epochs: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, gt=0)
    optimizer: dict[str, Any] | None = None


class MethodParams(Strict):
    """Keys every method accepts.

    ``method`` names the registered method when the key under ``methods:`` is an instance name
    of the user's (``gmp_90: {method: gmp, target_sparsity: 0.9}``); it defaults to the key.

    ``progressive: true`` runs the method's levels as one series per seed, in increasing
    compression, each level starting from the previous level's pruned and retrained model
    instead of the dense one (the progressive ADMM scheme of Ye et al. 2018, "Progressive
    weight pruning of deep neural networks using ADMM"); target-driven methods only. A series'
    budget is the sum of its steps (`sparsebench.suite.plan.plan`), so it is reported apart from
    the equal-budget curve.

    ``seeds`` runs the method on a subset of the suite's seeds (default: all of them), e.g. a
    costly series on one seed. It only says which runs there are, not what any run does, so
    it is left out of every dump (``exclude``): a run's fingerprint and recorded parameters,
    and a calibration's digest, are the same with and without it.
    """

    method: str | None = None
    retrain: RetrainOverride = RetrainOverride()
    levels: list[float] | None = Field(None, min_length=1)  # a subset of the suite's levels
    progressive: bool = False
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1, exclude=True)


class SparsityParams(MethodParams):
    """A method pruning to a target sparsity over the prunable weights.

    ``layer_sparsity`` (layer name -> target) overrides ``target_sparsity`` for the layers it
    names, e.g. the ADMM paper's LeNet-5 keep ratios; it implies per-layer scope.
    """

    target_sparsity: float = Field(0.9, ge=0, lt=1)
    scope: Literal["layer", "global"] = "layer"
    layer_sparsity: dict[str, Annotated[float, Field(ge=0, lt=1)]] | None = None

    @model_validator(mode="after")
    def _layer_scope(self) -> SparsityParams:
        if self.layer_sparsity and self.scope == "global":
            raise ValueError("layer_sparsity needs scope: layer (got scope: global)")
        return self

    def targets(self, model: nn.Module, key: str) -> float | dict[str, float]:
        """The target of every prunable layer of ``model``; unknown layer names are refused."""
        if not self.layer_sparsity:
            return self.target_sparsity
        names = [name for name, _ in prunable_modules(model)]
        for name in self.layer_sparsity:
            if name not in names:
                raise UsageError(f"methods.{key}.layer_sparsity.{name}: unknown layer; "
                                 f"allowed: {', '.join(names)}")
        return {n: self.layer_sparsity.get(n, self.target_sparsity) for n in names}


@dataclass
class Context:
    """What a method's prune phase may use: data, device, seeded generator, and the training
    batches' augmentation (`sparsebench.data.augment`; None: ``data.augment: none``), which
    every training batch a method draws goes through (`train.fit`'s ``augment``)."""

    train: Split  # (images, labels) in memory, or an `ImageSplit` streamed from disk
    val: Split
    device: torch.device
    generator: torch.Generator
    seed: int
    progress: bool | None = None
    on_epoch: Callable[[dict], None] | None = None  # sees each epoch's (or iteration's) row
    checkpoint: EpochCheckpoint | None = None  # where training saves its state each epoch
    augment: Augment | None = None

    def resume(self, tag: str = "fit", extra: Callable[[], dict] | None = None) -> Resume | None:
        """The `train.fit` argument that checkpoints this run (None without a checkpoint)."""
        return None if self.checkpoint is None else Resume(self.checkpoint, tag, extra)


class Method:
    """A pruning method: subclasses set ``name`` and ``Params`` and implement ``prune``."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    from_pretrained: ClassVar[bool] = True  # start from the shared dense checkpoint
    #: the parameter that sets a regularisation-driven method's sparsity (calibrated per level,
    #: `sparsebench.pipeline.calibrate`); None for target-driven methods and dense
    strength: ClassVar[str | None] = None

    @classmethod
    def kind(cls) -> str:
        """``target`` (takes a level as its target), ``regularised`` (its strength is
        calibrated to a level) or ``reference`` (dense: no level)."""
        if issubclass(cls.Params, SparsityParams):
            return "target"
        return "regularised" if cls.strength else "reference"

    def __init__(self, params: MethodParams, key: str | None = None):
        self.params = params
        self.key = key or self.name  # the entry under methods: in params.yaml

    def prune_epochs(self, n_train: int) -> int:
        """Epochs of training over ``n_train`` samples the prune phase costs (0 for one-shot
        methods; whole epochs, rounded up)."""
        return 0

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        """Prune ``model`` in place, leave its masks applied; return per-epoch curves."""
        if self.shares_prune():
            curves = self.trajectory(model, ctx)
            self.finish(model)
            return curves
        raise NotImplementedError

    def shares_prune(self) -> bool:
        """Whether the prune phase is `trajectory` then `finish`, with the level read by
        `finish` alone: the trajectory is then the same at every level (a method whose
        definition ends in a magnitude prune to the target: admm_l1, SAS-ADMM), so a suite
        trains it once per seed and each level finishes it (`sparsebench.run.shared_prune`)."""
        return False

    def trajectory(self, model: nn.Module, ctx: Context) -> list[dict]:
        """The prune phase up to its final masks, without reading the target; return curves."""
        raise NotImplementedError

    def finish(self, model: nn.Module) -> None:
        """Apply the final masks at the target to the model `trajectory` left."""
        raise NotImplementedError


class OptimizerPhaseParams(SparsityParams):
    """A method that trains while it prunes: its epochs, batch size and optimizer."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, gt=0)
    optimizer: OptimizerParams = OptimizerParams(lr=0.01, momentum=0.9)
