"""Methods that train sparse with a sparsity-inducing optimizer (`sparsebench.optim`):

- ``grda``: gRDA (Chao et al., NeurIPS 2020), from the ordinary random initialisation;
- ``linbreg`` / ``adabreg``: Bregman learning (Bungert et al., JMLR 2022), optionally from the
  Bregman sparse initialisation (``init_density``);
- ``proxsgd``: proximal SGD, the Bregman paper's baseline.

They train from their own initialisation, as their papers do (``init: pretrained`` starts from
the shared dense model instead). The mask is the set of exact nonzeros at the end, handed to
masked retrain (whose epochs may be 0). Sparsity per epoch is in the curves.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from sparsebench.core.metrics import prunable_modules
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.sparsity import apply_masks
from sparsebench.core.train import Phase, fit
from sparsebench.methods.base import Context, Method, MethodParams
from sparsebench.optim import GRDA, AdaBreg, LinBreg, ProxSGD, param_groups, sparse_init
from sparsebench.optim._checks import mu_warning

Beta = Annotated[float, Field(ge=0, lt=1)]
LinearReg = Literal["l1", "l12_row", "none"]
ConvReg = Literal["l1", "l12_kernel", "none"]


class SparseTrainingParams(MethodParams):
    """The training phase of a sparse-training method; plus the keys of `MethodParams`.

    Attributes:
        init: ``scratch`` (the method's own initialisation, as its paper) or ``pretrained``
            (the suite's dense model).
        epochs: Epochs of training.
        batch_size: Its batch size.
        lr: The learning rate.
        schedule: ``constant``, ``cosine`` (to zero over the phase) or ``step`` (lr x
            ``gamma`` every ``step_size`` epochs).
        step_size: Epochs between two decays of the ``step`` schedule.
        gamma: The decay factor of the ``step`` schedule.
    """

    init: Literal["scratch", "pretrained"] = "scratch"
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.1, gt=0)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = Field(10, gt=0)
    gamma: float = Field(0.1, gt=0, le=1)


class GRDAParams(SparseTrainingParams):
    """gRDA's settings (`sparsebench.optim.GRDA`); plus the keys of `SparseTrainingParams`.

    A ``mu`` in (0, 0.5] is allowed with a ``UserWarning`` (the authors recommend
    0.5 < mu < 1).

    Attributes:
        c: The penalty scale: the strength calibrated to a level.
        mu: The penalty growth exponent, in (0, 1).
        scope: ``weights`` (the prunable weights penalised; biases and normalisation plain
            SGD) or ``all`` (every parameter, the authors' code).
    """

    c: float = Field(0.005, ge=0)
    mu: float = Field(0.51, gt=0, lt=1)
    scope: Literal["weights", "all"] = "weights"  # "all": the authors' (biases and BN too)

    @model_validator(mode="after")
    def _warn_small_mu(self) -> GRDAParams:
        if text := mu_warning(self.mu):
            warnings.warn(text, UserWarning, stacklevel=2)
        return self


class BregmanParams(SparseTrainingParams):
    """The settings of the Bregman optimizers; plus the keys of `SparseTrainingParams`.

    Attributes:
        lam: The regularisation strength: the strength calibrated to a level.
        delta: The elastic-net parameter.
        reg_linear: The regulariser of the ``nn.Linear`` weights: ``l1``, ``l12_row`` (the
            group norm of each row) or ``none``.
        reg_conv: The regulariser of the ``nn.Conv*`` weights: ``l1``, ``l12_kernel`` (the
            group norm of each kernel) or ``none``.
        init_density: The kept fraction of the Bregman sparse initialisation
            (`sparsebench.optim.sparse_init`); None: the ordinary dense initialisation.
    """

    lam: float = Field(1e-3, ge=0)
    delta: float = Field(1.0, gt=0)
    reg_linear: LinearReg = "l1"
    reg_conv: ConvReg = "l1"
    init_density: float | None = Field(None, gt=0, le=1)  # Bregman sparse init: keep p


class LinBregParams(BregmanParams):
    """LinBreg's settings (`sparsebench.optim.LinBreg`); plus the keys of `BregmanParams`.

    Attributes:
        momentum: The momentum b of the subgradient step (0: plain LinBreg).
    """

    momentum: float = Field(0.0, ge=0, lt=1)


class AdaBregParams(BregmanParams):
    """AdaBreg's settings (`sparsebench.optim.AdaBreg`); plus the keys of `BregmanParams`.

    Attributes:
        lr: The learning rate (Adam's default).
        betas: Adam's moment coefficients.
        eps: Adam's denominator term.
    """

    lr: float = Field(1e-3, gt=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class ProxSGDParams(SparseTrainingParams):
    """ProxSGD's settings (`sparsebench.optim.ProxSGD`).

    Plus the keys of `SparseTrainingParams`.

    Attributes:
        lam: The regularisation strength: the strength calibrated to a level.
        momentum: SGD's momentum (0: none).
        reg_linear: The regulariser of the ``nn.Linear`` weights: ``l1``, ``l12_row`` or
            ``none``.
        reg_conv: The regulariser of the ``nn.Conv*`` weights: ``l1``, ``l12_kernel`` or
            ``none``.
    """

    lam: float = Field(1e-4, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    reg_linear: LinearReg = "l1"
    reg_conv: ConvReg = "l1"


class SparseTraining(Method):
    """Train with a sparsity-inducing optimizer; the final exact zeros are the mask.

    Subclasses implement `optimizer`. The masks are applied after training and handed to
    masked retrain.

    Args:
        params: The training phase and the optimizer's settings (`SparseTrainingParams`).
        key: Its entry under ``methods:``; None: the method's ``name``.
    """

    Params = SparseTrainingParams

    @property
    def from_pretrained(self) -> bool:  # type: ignore[override]
        """Whether the method starts from the pretrained model (``init: pretrained``)."""
        return self.params.init == "pretrained"

    def prune_epochs(self, n_train: int) -> int:
        """The prune phase's epochs.

        Args:
            n_train: The number of training samples (not needed: the phase is in epochs).

        Returns:
            ``epochs``.
        """
        return self.params.epochs

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The sparsity-inducing optimizer over ``model``'s parameters.

        Args:
            model: The model to train.

        Returns:
            The optimizer.

        Raises:
            NotImplementedError: Here; each method implements it.
        """
        raise NotImplementedError

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        """Train ``model`` with the optimizer, then mask its exact zeros.

        From a fresh initialisation, with ``init_density`` set, the prunable weights are
        first re-initialised sparse (`sparsebench.optim.sparse_init`).

        Args:
            model: The model (fresh, or pretrained with ``init: pretrained``), trained in
                place; its masks are applied at the end.
            ctx: Data, device and seeded generator of the run.

        Returns:
            One row of figures per epoch (`sparsebench.core.train.fit`).
        """
        p = self.params
        density = getattr(p, "init_density", None)
        if density is not None and not self.from_pretrained:
            sparse_init(model, density, generator=ctx.generator)
        schedule = OptimizerParams(lr=p.lr, schedule=p.schedule, step_size=p.step_size,
                               gamma=p.gamma)
        curves = fit(model, ctx.train, ctx.val, Phase(p.epochs, p.batch_size, schedule,
                                                      self.name),
                     generator=ctx.generator, device=ctx.device,
                     optimizer=self.optimizer(model), progress=ctx.progress,
                     on_epoch=ctx.on_epoch, resume=ctx.resume(), augment=ctx.augment)
        apply_masks(model, {name: m.weight.detach() != 0 for name, m in prunable_modules(model)})
        return curves


class GRDAMethod(SparseTraining):
    """gRDA: w = S_{g(n, lr)}(w_0 - lr sum g), g(n, lr) = c lr^{1/2} (n lr)^mu.

    Generalized regularized dual averaging of Chao, Wang, Xing and Cheng, "Directional
    pruning of deep neural networks", NeurIPS 2020 (`sparsebench.optim.GRDA`), from the
    ordinary random initialisation; the strength ``c`` is calibrated to a level.

    Args:
        params: The training phase and gRDA's ``c`` and ``mu`` (`GRDAParams`).
        key: Its entry under ``methods:``; None: ``grda``.

    Examples:
        The threshold grows with the steps, so the sparsity does, and a larger ``c`` prunes
        more; the biases are not penalised, and the mask is the set of exact nonzeros:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.methods import Context
        >>> from sparsebench.methods.sparse_training import GRDAMethod
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> method = GRDAMethod(GRDAMethod.Params(c=0.5, epochs=2, batch_size=16))
        >>> method.from_pretrained, method.kind(), method.strength
        (False, 'regularised', 'c')
        >>> curves = method.prune(model, ctx)
        >>> 0 < curves[0]["sparsity"] < curves[1]["sparsity"]
        True
        >>> all(torch.equal(m.weight_mask.bool(), m.weight != 0) for m in (model[0], model[2]))
        True
        >>> bool((model[0].bias == 0).any())
        False
        >>> weaker = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> _ = GRDAMethod(GRDAMethod.Params(c=0.1, epochs=2, batch_size=16)).prune(weaker, ctx)
        >>> sparsity_summary(weaker)["sparsity"] < sparsity_summary(model)["sparsity"]
        True
    """

    name = "grda"
    Params = GRDAParams
    strength = "c"

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The `GRDA` optimizer over ``model``'s parameters.

        Args:
            model: The model to train.

        Returns:
            A `GRDA` over every parameter (``scope: all``), or with ``c = 0`` for the
            parameters other than the prunable weights (``scope: weights``).
        """
        p = self.params
        if p.scope == "all":
            return GRDA(model.parameters(), lr=p.lr, c=p.c, mu=p.mu)
        weights = {id(m.weight) for _, m in prunable_modules(model)}
        groups = [{"params": [q for q in model.parameters() if id(q) in weights]},
                  {"params": [q for q in model.parameters() if id(q) not in weights], "c": 0.0}]
        return GRDA([g for g in groups if g["params"]], lr=p.lr, c=p.c, mu=p.mu)


class LinBregMethod(SparseTraining):
    """LinBreg (with momentum when ``momentum > 0``): v -= lr g; theta = prox(delta v).

    Linearized Bregman iterations of Bungert, Roith, Tenbrinck and Burger, "A Bregman
    learning framework for sparse neural networks", JMLR 23(192), 2022
    (`sparsebench.optim.LinBreg`): sparse to dense, optionally from the Bregman sparse
    initialisation (``init_density``); the strength ``lam`` is calibrated to a level.

    Args:
        params: The training phase and LinBreg's settings (`LinBregParams`).
        key: Its entry under ``methods:``; None: ``linbreg``.

    Examples:
        From a sparse initialisation keeping 20% of the weights, training regrows some of
        them (the inverse scale space), and the mask is the set of exact nonzeros:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.methods import Context
        >>> from sparsebench.methods.sparse_training import LinBregMethod
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> method = LinBregMethod(LinBregMethod.Params(lam=0.1, init_density=0.2, epochs=2,
        ...                                             batch_size=16))
        >>> curves = method.prune(model, ctx)
        >>> curves[0]["sparsity"] > curves[1]["sparsity"] > 0.7
        True
        >>> all(torch.equal(m.weight_mask.bool(), m.weight != 0) for m in (model[0], model[2]))
        True
    """

    name = "linbreg"
    Params = LinBregParams
    strength = "lam"

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The `LinBreg` optimizer over ``model``'s parameters.

        Args:
            model: The model to train.

        Returns:
            A `LinBreg` over `sparsebench.optim.param_groups`: the prunable weights
            regularised, the other parameters not.
        """
        p = self.params
        groups = param_groups(model, lam=p.lam, reg_linear=p.reg_linear, reg_conv=p.reg_conv,
                              delta=p.delta)
        return LinBreg(groups, lr=p.lr, lam=p.lam, delta=p.delta, momentum=p.momentum)


class AdaBregMethod(SparseTraining):
    """AdaBreg: Adam's moments on the subgradient v; theta = prox(delta v).

    The adaptive Bregman iterations of Bungert, Roith, Tenbrinck and Burger, "A Bregman
    learning framework for sparse neural networks", JMLR 23(192), 2022
    (`sparsebench.optim.AdaBreg`), optionally from the Bregman sparse initialisation
    (``init_density``); the strength ``lam`` is calibrated to a level.

    Args:
        params: The training phase and AdaBreg's settings (`AdaBregParams`).
        key: Its entry under ``methods:``; None: ``adabreg``.

    Examples:
        From a sparse initialisation keeping 20% of the weights; the mask is the set of
        exact nonzeros:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.methods import Context
        >>> from sparsebench.methods.sparse_training import AdaBregMethod
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> method = AdaBregMethod(AdaBregMethod.Params(lam=0.1, lr=0.01, init_density=0.2,
        ...                                             epochs=2, batch_size=16))
        >>> curves = method.prune(model, ctx)
        >>> len(curves), sparsity_summary(model)["sparsity"] > 0.75
        (2, True)
        >>> all(torch.equal(m.weight_mask.bool(), m.weight != 0) for m in (model[0], model[2]))
        True
    """

    name = "adabreg"
    Params = AdaBregParams
    strength = "lam"

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The `AdaBreg` optimizer over ``model``'s parameters.

        Args:
            model: The model to train.

        Returns:
            An `AdaBreg` over `sparsebench.optim.param_groups`: the prunable weights
            regularised, the other parameters not.
        """
        p = self.params
        groups = param_groups(model, lam=p.lam, reg_linear=p.reg_linear, reg_conv=p.reg_conv,
                              delta=p.delta)
        return AdaBreg(groups, lr=p.lr, lam=p.lam, delta=p.delta, betas=p.betas, eps=p.eps)


class ProxSGDMethod(SparseTraining):
    """Proximal SGD: an SGD step, then prox_{lr lam J}.

    The baseline of Bungert, Roith, Tenbrinck and Burger, "A Bregman learning framework for
    sparse neural networks", JMLR 23(192), 2022, section 5; for l1 the stochastic ISTA of
    Combettes and Wajs, "Signal recovery by proximal forward-backward splitting", Multiscale
    Model. Simul. 4(4), 2005 (`sparsebench.optim.ProxSGD`). The strength ``lam`` is
    calibrated to a level.

    Args:
        params: The training phase and ProxSGD's settings (`ProxSGDParams`).
        key: Its entry under ``methods:``; None: ``proxsgd``.

    Examples:
        The prox sets more weights to zero as training goes, and the mask is the set of
        exact nonzeros:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.methods import Context
        >>> from sparsebench.methods.sparse_training import ProxSGDMethod
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> method = ProxSGDMethod(ProxSGDMethod.Params(lam=0.1, epochs=2, batch_size=16))
        >>> curves = method.prune(model, ctx)
        >>> 0 < curves[0]["sparsity"] < curves[1]["sparsity"]
        True
        >>> all(torch.equal(m.weight_mask.bool(), m.weight != 0) for m in (model[0], model[2]))
        True
    """

    name = "proxsgd"
    Params = ProxSGDParams
    strength = "lam"

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The `ProxSGD` optimizer over ``model``'s parameters.

        Args:
            model: The model to train.

        Returns:
            A `ProxSGD` over `sparsebench.optim.param_groups`: the prunable weights
            regularised, the other parameters not.
        """
        p = self.params
        groups = param_groups(model, lam=p.lam, reg_linear=p.reg_linear, reg_conv=p.reg_conv)
        return ProxSGD(groups, lr=p.lr, lam=p.lam, momentum=p.momentum)
