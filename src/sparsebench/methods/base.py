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
    """A method's changes to the shared ``retrain`` section (any subset of it).

    Attributes:
        epochs: Epochs of masked retrain; None keeps the shared value.
        batch_size: Batch size of masked retrain; None keeps the shared value.
        optimizer: Keys of the retrain optimizer to change (any subset of
            `sparsebench.core.schema.OptimizerParams`); None keeps the shared optimizer.
    """

    epochs: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, gt=0)
    optimizer: dict[str, Any] | None = None


class MethodParams(Strict):
    """Keys every method accepts.

    Attributes:
        method: The registered method when the key under ``methods:`` is an instance name of
            the user's (``gmp_90: {method: gmp, target_sparsity: 0.9}``); None: the key itself.
        retrain: The method's changes to the shared masked retrain section.
        levels: A subset of the suite's levels (compression ratios) to run; None: all of them.
        progressive: Run the method's levels as one series per seed, in increasing
            compression, each level starting from the previous level's pruned and retrained
            model instead of the dense one (the progressive ADMM scheme of Ye et al. 2018,
            "Progressive weight pruning of deep neural networks using ADMM"); target-driven
            methods only. A series' budget is the sum of its steps
            (`sparsebench.suite.plan.plan`), so it is reported apart from the equal-budget
            curve.
        seeds: A subset of the suite's seeds to run the method on (None: all of them), e.g.
            a costly series on one seed. It only says which runs there are, not what any run
            does, so it is left out of every dump (``exclude``): a run's fingerprint and
            recorded parameters, and a calibration's digest, are the same with and without it.
    """

    method: str | None = None
    retrain: RetrainOverride = RetrainOverride()
    levels: list[float] | None = Field(None, min_length=1)  # a subset of the suite's levels
    progressive: bool = False
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1, exclude=True)


class SparsityParams(MethodParams):
    """A method pruning to a target sparsity over the prunable weights.

    Rule: ``layer_sparsity`` needs ``scope: layer``. Plus the keys of `MethodParams`.

    Attributes:
        target_sparsity: The fraction of the prunable weights set to zero, in [0, 1).
        scope: ``layer`` (every prunable layer pruned to the target) or ``global`` (one
            threshold over all prunable layers together).
        layer_sparsity: Layer name -> target, overriding ``target_sparsity`` for the layers it
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
        """The target of every prunable layer of ``model``.

        Args:
            model: The model to prune.
            key: The method's entry under ``methods:``, for the error message.

        Returns:
            ``target_sparsity`` without ``layer_sparsity``; otherwise each prunable layer's
            name -> its target (``target_sparsity`` for the layers not named).

        Raises:
            sparsebench.util.errors.UsageError: For a ``layer_sparsity`` name that is no
                prunable layer of ``model``.

        Examples:
            >>> from torch import nn
            >>> from sparsebench.methods.base import SparsityParams
            >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
            >>> SparsityParams(target_sparsity=0.9).targets(model, "magnitude")
            0.9
            >>> SparsityParams(layer_sparsity={"2": 0.5}).targets(model, "magnitude")
            {'0': 0.9, '2': 0.5}
        """
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
    """What a method's prune phase may use: data, device, seeded generator, augmentation.

    Attributes:
        train: The training split: (images, labels) in memory, or an `ImageSplit` streamed
            from disk.
        val: The validation split, in the same form.
        device: Where to train.
        generator: The run's seeded CPU generator (batch order, random masks, augmentation).
        seed: The run's seed.
        progress: Show progress bars; None: only when stderr is a terminal.
        on_epoch: Called with each epoch's (or ADMM iteration's) row of figures.
        checkpoint: Where training saves its state each epoch; None: not resumable.
        augment: The training batches' augmentation (`sparsebench.data.augment`; None:
            ``data.augment: none``), which every training batch a method draws goes through
            (`sparsebench.core.train.fit`'s ``augment``).
    """

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
        """The `sparsebench.core.train.fit` argument that checkpoints this run.

        Args:
            tag: The name of the training call within the run (a method with several calls,
                as ADMM's iterations, gives each its own).
            extra: Returns the method's own state to save beside the model's at each epoch.

        Returns:
            The resume argument, or None without a checkpoint.
        """
        return None if self.checkpoint is None else Resume(self.checkpoint, tag, extra)


class Method:
    """A pruning method: subclasses set ``name`` and ``Params`` and implement ``prune``.

    A method whose prune phase is the same at every level up to its final masks also
    implements `trajectory` and `finish` and returns True from `shares_prune`.

    Args:
        params: The method's parameters, an instance of its ``Params``.
        key: Its entry under ``methods:`` in params.yaml; None: the method's ``name``.

    Attributes:
        name: The name the method is registered under (`sparsebench.methods.METHODS`).
        Params: The pydantic model of its parameters.
        from_pretrained: Whether it starts from the suite's pretrained dense model (else from
            a fresh initialisation).
        strength: The parameter that sets a regularisation-driven method's sparsity
            (calibrated per level); None for target-driven methods and dense.
    """

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    from_pretrained: ClassVar[bool] = True  # start from the shared dense checkpoint
    #: the parameter that sets a regularisation-driven method's sparsity (calibrated per level,
    #: `sparsebench.pipeline.calibrate`); None for target-driven methods and dense
    strength: ClassVar[str | None] = None

    @classmethod
    def kind(cls) -> str:
        """How the method reaches a level.

        Returns:
            ``target`` (takes a level as its target), ``regularised`` (its strength is
            calibrated to a level) or ``reference`` (dense: no level).
        """
        if issubclass(cls.Params, SparsityParams):
            return "target"
        return "regularised" if cls.strength else "reference"

    def __init__(self, params: MethodParams, key: str | None = None):
        self.params = params
        self.key = key or self.name  # the entry under methods: in params.yaml

    def prune_epochs(self, n_train: int) -> int:
        """Epochs of training the prune phase costs.

        Args:
            n_train: The number of training samples.

        Returns:
            Whole epochs, rounded up; 0 for one-shot methods.
        """
        return 0

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        """Prune ``model`` in place and leave its masks applied.

        The base class runs `trajectory` then `finish` when `shares_prune` is True.

        Args:
            model: The model, pretrained or freshly initialised (see ``from_pretrained``),
                on ``ctx.device``.
            ctx: Data, device and seeded generator of the run.

        Returns:
            One row of figures per epoch (or iteration); empty for one-shot methods.

        Raises:
            NotImplementedError: In a subclass that implements neither this nor `trajectory`
                and `finish`.
        """
        if self.shares_prune():
            curves = self.trajectory(model, ctx)
            self.finish(model)
            return curves
        raise NotImplementedError

    def shares_prune(self) -> bool:
        """Whether the prune phase is `trajectory` then `finish`, the level read by `finish`.

        The trajectory is then the same at every level (a method whose definition ends in a
        magnitude prune to the target: admm_l1, SAS-ADMM), so a suite trains it once per seed
        and each level finishes it (`sparsebench.run.shared_prune`).

        Returns:
            False here; True in the methods that share their prune phase.
        """
        return False

    def trajectory(self, model: nn.Module, ctx: Context) -> list[dict]:
        """The prune phase up to its final masks, without reading the target.

        Args:
            model: The model, trained in place and left unmasked.
            ctx: Data, device and seeded generator of the run.

        Returns:
            One row of figures per epoch (or iteration).

        Raises:
            NotImplementedError: In a method that does not share its prune phase.
        """
        raise NotImplementedError

    def finish(self, model: nn.Module) -> None:
        """Apply the final masks at the target to the model `trajectory` left.

        Args:
            model: The model as `trajectory` left it; its masks are applied in place.

        Raises:
            NotImplementedError: In a method that does not share its prune phase.
        """
        raise NotImplementedError


class OptimizerPhaseParams(SparsityParams):
    """A method that trains while it prunes: its epochs, batch size and optimizer.

    Plus the keys of `SparsityParams`.

    Attributes:
        epochs: Epochs of the prune phase.
        batch_size: Its batch size.
        optimizer: Its optimizer and learning-rate schedule.
    """

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, gt=0)
    optimizer: OptimizerParams = OptimizerParams(lr=0.01, momentum=0.9)
