"""SAS-ADMM: symmetric accelerated stochastic ADMM pruning (Yuan, Bai, Jiang, Du,
Neurocomputing 575:127327, 2024; ALGORITHMS.md section 4).

min f(W) + lambda ||Z||_1 s.t. W = Z, with the augmented Lagrangian
L = f(W) + lambda ||Z||_1 - <U, W - Z> + (beta / 2) ||W - Z||^2. Outer iteration k:

1. Linearised W-step solved by accelerated stochastic approximation, with
   h = rho W^k + U^k - beta (W^k - Z^k) and rho = beta; for t = 1..M_k, a fresh minibatch each:
   b_t = 2 / (t + 1), g_t = 2 / (eta_k t), W_md = b_t Wb + (1 - b_t) W, d = grad f(W_md),
   Wb = (g_t Wb + h - d) / (g_t + rho), W = b_t Wb + (1 - b_t) W  (Wb persists across k).
2. Symmetric dual updates around the Z-step:
   U_half = U - r beta (W - Z); Z = S_{lambda / beta}(W - U_half / beta);
   U = U_half - s beta (W - Z).
3. Schedules: M_k = M for k < k0, else ceil(c k^q) with c = M / k0^q; eta_k = 1 / v for k < k0,
   else M (M + 1) / (v M_k (M_k + 1)).
4. The ergodic average of W over the iterations k >= ``last`` is written into the network
   (as the paper and the released sas.py, which set W_ag = W up to k = last, then average
   each later W into it: W_last is included).

How the released code runs it, and the keys that choose (defaults: the authors' choices):
``z_init`` ``w`` (Z0 = W, the released code) or ``soft_threshold`` (Z0 = S_{lambda/beta}(W));
``train_non_weights`` false (the released code updates only the weights; biases and batch norm
stay frozen) or true: parameters outside the l1 coupling then take the same accelerated steps
on f alone, with h = rho W^k, a proximal anchor at the current point; ``sampling``
``with_replacement`` (the released RandomSampler(replacement=True): every minibatch drawn
independently) or ``without_replacement`` (shuffled passes over the training set).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from sparsebench.core import accelerate, distributed
from sparsebench.core.checkpoints import restore_training, training_state
from sparsebench.core.metrics import prunable_modules
from sparsebench.core.sparsity import apply_masks, keep_count, topk_mask
from sparsebench.core.train import evaluate
from sparsebench.data.stream import ImageSplit, size_of
from sparsebench.methods.base import Context, Method, SparsityParams

GOLDEN = (1 + math.sqrt(5)) / 2
REGION = "r in (-1, 1), s in (0, (1 + sqrt 5) / 2), r + s > 0 and |r| < 1 + s - s^2"


def check_region(r: float, s: float) -> None:
    """Refuse (r, s) outside the convergence region of symmetric ADMM.

    The region `REGION` of He, Ma and Yuan, "Convergence study on the symmetric version of
    ADMM with larger step sizes", SIAM J. Imaging Sciences 9(3), 2016, which SAS-ADMM (Yuan
    et al. 2024) requires of its dual step factors.

    Args:
        r: The dual step factor before the Z-step.
        s: The dual step factor after the Z-step.

    Raises:
        ValueError: For (r, s) outside the region, naming it.

    Examples:
        >>> from sparsebench.methods.sas_admm import check_region
        >>> check_region(0.9, 1.09)  # the released values: nothing raised
        >>> check_region(0.9, 1.7)
        Traceback (most recent call last):
        ...
        ValueError: (r, s) = (0.9, 1.7) is outside the convergence region of symmetric ADMM;
        allowed: r in (-1, 1), s in (0, (1 + sqrt 5) / 2), r + s > 0 and |r| < 1 + s - s^2
    """
    if not (-1 < r < 1 and 0 < s < GOLDEN and r + s > 0 and abs(r) < 1 + s - s * s):
        raise ValueError(f"(r, s) = ({r}, {s}) is outside the convergence region of symmetric "
                         f"ADMM; allowed: {REGION}")


def inner_steps(k: int, M: int, k0: int, q: float) -> int:
    """M_k, the inner steps of SAS-ADMM's iteration k (Yuan et al. 2024).

    M before k0, then growing as ceil(c k^q) with c = M / k0^q.

    Args:
        k: The outer iteration, from 1.
        M: The inner steps before ``k0``.
        k0: The first iteration whose inner steps grow.
        q: The growth exponent.

    Returns:
        The number of inner steps (minibatches) of iteration ``k``.

    Examples:
        >>> from sparsebench.methods.sas_admm import inner_steps
        >>> [inner_steps(k, M=50, k0=50, q=1.1) for k in (1, 49, 50, 51, 100, 190)]
        [50, 50, 50, 52, 108, 218]
    """
    return M if k < k0 else math.ceil(M / k0**q * k**q)


def step_size(k: int, M: int, k0: int, q: float, v: float) -> float:
    """eta_k, the step size of SAS-ADMM's iteration k (Yuan et al. 2024).

    1 / v before k0, then M (M + 1) / (v M_k (M_k + 1)), with M_k from `inner_steps`.

    Args:
        k: The outer iteration, from 1.
        M: The inner steps before ``k0``.
        k0: The first iteration whose inner steps grow.
        q: The growth exponent of the inner steps.
        v: The inverse of the initial step size.

    Returns:
        The step size eta_k.

    Examples:
        >>> from sparsebench.methods.sas_admm import step_size
        >>> step_size(1, M=50, k0=50, q=1.1, v=25.0), step_size(50, M=50, k0=50, q=1.1, v=25.0)
        (0.04, 0.04)
    """
    if k < k0:
        return 1 / v
    Mk = inner_steps(k, M, k0, q)
    return M * (M + 1) / (v * Mk * (Mk + 1))


class SASADMM:
    """The SAS-ADMM state for a model: W, Wb, Z, U per coupled weight; W, Wb for the rest.

    Symmetric accelerated stochastic ADMM (Yuan, Bai, Jiang and Du, Neurocomputing
    575:127327, 2024) for ``min f(W) + lambda ||Z||_1 s.t. W = Z``. One outer iteration k is
    `begin`, then for t = 1..M_k a minibatch gradient at the point `set_md` puts into the
    network and an `inner_step`, then `dual_step` (the module docstring gives the rules);
    `accumulate` and `write_average` make the ergodic average of W. At the start W = Wb =
    the parameters, U = 0 and Z = W (or ``S_{lambda / beta}(W)``).

    Args:
        coupled: Parameters in the l1-constrained problem (the prunable weights).
        free: The other trained parameters (biases, normalisation); they take the same
            accelerated steps on f alone.
        beta: Penalty beta, ``> 0`` (= rho of the linearisation).
        lam: Lambda of the l1 term, ``>= 0``.
        r: The symmetric dual step factor before the Z-step (see `check_region`).
        s: The symmetric dual step factor after the Z-step (see `check_region`).
        z_init: ``w`` (Z0 = W, the released code) or ``soft_threshold`` (Z0 = S(W)).

    Raises:
        ValueError: For ``beta <= 0``, ``lam < 0`` or (r, s) outside the convergence region.

    Examples:
        Five outer iterations on the two weights of a small net, the last three averaged.
        The inner steps grow after k0 = 3, the Z-step leaves exact zeros in Z, and the
        network ends with the ergodic average of W:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from sparsebench.methods.sas_admm import SASADMM, inner_steps, step_size
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> sas = SASADMM([model[0].weight, model[2].weight], [], beta=0.5, lam=0.05,
        ...               r=0.9, s=1.09)
        >>> steps = []
        >>> for k in range(1, 6):
        ...     h, eta = sas.begin(), step_size(k, M=4, k0=3, q=1.1, v=25.0)
        ...     steps.append(inner_steps(k, M=4, k0=3, q=1.1))
        ...     for t in range(1, steps[-1] + 1):
        ...         sas.set_md(t)
        ...         model.zero_grad()
        ...         F.cross_entropy(model(x), y).backward()
        ...         sas.inner_step(t, eta, h)
        ...     residuals = sas.dual_step()
        ...     if k >= 3:
        ...         sas.accumulate()
        >>> steps, sas.averaged
        ([4, 4, 4, 6, 8], 3)
        >>> [bool((z == 0).any()) for z in sas.Z], residuals["z_sparsity"] > 0
        ([True, True], True)
        >>> sas.write_average()
        >>> torch.equal(model[0].weight, sas.sums[0] / 3)
        True
    """

    def __init__(self, coupled: list[nn.Parameter], free: list[nn.Parameter], *, beta: float,
                 lam: float, r: float, s: float, z_init: str = "w"):
        if beta <= 0:
            raise ValueError(f"Invalid beta: {beta} (must be > 0)")
        if lam < 0:
            raise ValueError(f"Invalid lam: {lam} (must be >= 0)")
        check_region(r, s)
        self.coupled, self.free = coupled, free
        self.beta, self.lam, self.r, self.s = beta, lam, r, s
        with torch.no_grad():
            self.W = [p.detach().clone() for p in coupled + free]
            self.Wb = [w.clone() for w in self.W]
            self.Z = [F.softshrink(p.detach(), lam / beta) if z_init == "soft_threshold"
                      else p.detach().clone() for p in coupled]
            self.U = [torch.zeros_like(p) for p in coupled]
        self.sums: list[torch.Tensor] | None = None
        self.averaged = 0

    @property
    def params(self) -> list[nn.Parameter]:
        """The coupled parameters, then the free ones (the order of ``W`` and ``Wb``)."""
        return self.coupled + self.free

    @torch.no_grad()
    def begin(self) -> list[torch.Tensor]:
        """Start an outer iteration: h = rho W^k + U^k - beta (W^k - Z^k), with rho = beta.

        The linearised W-step of Yuan et al. 2024.

        Returns:
            h for each parameter, in `params` order (rho W^k for a free parameter).
        """
        beta, n = self.beta, len(self.coupled)
        return [beta * self.Z[i] + self.U[i] if i < n else beta * w
                for i, w in enumerate(self.W)]

    @torch.no_grad()
    def set_md(self, t: int) -> None:
        """Put W_md = b_t Wb + (1 - b_t) W into the network, b_t = 2 / (t + 1).

        The minibatch gradient of inner step ``t`` is taken there (the accelerated
        stochastic W-step of Yuan et al. 2024).

        Args:
            t: The inner step, from 1.
        """
        b = 2 / (t + 1)
        for p, w, wb in zip(self.params, self.W, self.Wb, strict=True):
            p.copy_(wb).mul_(b).add_(w, alpha=1 - b)

    @torch.no_grad()
    def inner_step(self, t: int, eta: float, h: list[torch.Tensor]) -> None:
        """One accelerated step: Wb = (g_t Wb + h - d) / (g_t + rho), W = b_t Wb + (1 - b_t) W.

        With b_t = 2 / (t + 1), g_t = 2 / (eta t), rho = beta and d the gradient the
        parameters hold (taken at W_md, `set_md`; zero where none); the accelerated
        stochastic W-step of Yuan et al. 2024.

        Args:
            t: The inner step, from 1.
            eta: The iteration's step size (`step_size`).
            h: What `begin` returned for this iteration.
        """
        b, g, rho = 2 / (t + 1), 2 / (eta * t), self.beta
        for p, w, wb, hi in zip(self.params, self.W, self.Wb, h, strict=True):
            d = p.grad if p.grad is not None else torch.zeros_like(p)
            wb.mul_(g).add_(hi).sub_(d).div_(g + rho)
            w.mul_(1 - b).add_(wb, alpha=b)

    @torch.no_grad()
    def dual_step(self) -> dict[str, float]:
        """The symmetric dual updates around the Z-step; W goes back into the network.

        U_half = U - r beta (W - Z); Z = S_{lambda / beta}(W - U_half / beta);
        U = U_half - s beta (W - Z) (Yuan et al. 2024).

        Returns:
            ``primal_residual`` ||W - Z|| / ||W||, ``dual_residual`` beta ||Z - Z_prev|| /
            ||W|| and ``z_sparsity`` (the sparsity Z gives), over the coupled weights.
        """
        beta, r, s = self.beta, self.r, self.s
        primal_sq = dual_sq = w_sq = 0.0
        zeros = numel = 0
        for i, w in enumerate(self.W[: len(self.coupled)]):
            u_half = self.U[i] - r * beta * (w - self.Z[i])
            z_prev = self.Z[i]
            self.Z[i] = F.softshrink(w - u_half / beta, self.lam / beta)
            self.U[i] = u_half - s * beta * (w - self.Z[i])
            primal_sq += (w - self.Z[i]).pow(2).sum().item()
            dual_sq += (self.Z[i] - z_prev).pow(2).sum().item()
            w_sq += w.pow(2).sum().item()
            zeros += (self.Z[i] == 0).sum().item()
            numel += w.numel()
        for p, w in zip(self.params, self.W, strict=True):
            p.copy_(w)
        norm = math.sqrt(w_sq) or 1.0
        return {"primal_residual": math.sqrt(primal_sq) / norm,
                "dual_residual": beta * math.sqrt(dual_sq) / norm,
                "z_sparsity": zeros / max(1, numel)}

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add the current W to the ergodic average."""
        if self.sums is None:
            self.sums = [torch.zeros_like(w) for w in self.W]
        for acc, w in zip(self.sums, self.W, strict=True):
            acc.add_(w)
        self.averaged += 1

    def state_dict(self) -> dict:
        """W, Wb, Z, U and the ergodic sums: what an interrupted run needs to resume.

        Returns:
            A dict of copies, for `load_state_dict`.
        """
        return {"W": [w.clone() for w in self.W], "Wb": [w.clone() for w in self.Wb],
                "Z": [z.clone() for z in self.Z], "U": [u.clone() for u in self.U],
                "sums": None if self.sums is None else [a.clone() for a in self.sums],
                "averaged": self.averaged}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved, on the device of the current state.

        Args:
            state: A `state_dict` of a SAS-ADMM state over parameters of the same shapes.

        Raises:
            KeyError: If ``state`` is for other parameter shapes.
        """
        if [tuple(w.shape) for w in state["W"]] != [tuple(w.shape) for w in self.W]:
            raise KeyError("SAS-ADMM state is for other parameter shapes")
        device = self.W[0].device
        self.W, self.Wb, self.Z, self.U = ([t.clone().to(device) for t in state[k]]
                                           for k in ("W", "Wb", "Z", "U"))
        self.sums = (None if state["sums"] is None
                     else [a.clone().to(device) for a in state["sums"]])
        self.averaged = state["averaged"]

    @torch.no_grad()
    def write_average(self) -> None:
        """Write the ergodic average of W into the network (the last W if none was kept)."""
        source = self.W if self.sums is None else [a / self.averaged for a in self.sums]
        for p, w in zip(self.params, source, strict=True):
            p.copy_(w)


class SASADMMParams(SparsityParams):
    """SAS-ADMM's settings: the released defaults (ResNet-32 CIFAR-10) unless stated otherwise.

    Rules: (r, s) in the convergence region of symmetric ADMM (`check_region`); ``last`` <=
    ``iterations``. Plus the keys of `SparsityParams`.

    Attributes:
        beta: Penalty beta (= rho of the linearised W-step).
        lam: Lambda of the l1 term.
        M: Inner steps per iteration before ``k0`` (`inner_steps`).
        k0: The first iteration whose inner steps grow.
        q: The growth exponent of the inner steps.
        v: The inverse of the initial step size (`step_size`).
        iterations: The outer iterations (the released code's ``maxIter``).
        last: W is averaged over the iterations k >= ``last``.
        r: The dual step factor before the Z-step.
        s: The dual step factor after the Z-step.
        batch_size: The minibatch size of an inner step.
        layer_types: Which layers the final magnitude prune hits: ``all``, ``conv`` or
            ``linear`` (the others stay dense).
        z_init: ``w`` (Z0 = W, the released code) or ``soft_threshold`` (Z0 = S(W)).
        train_non_weights: Train the parameters outside the l1 coupling too (biases, batch
            norm); false: frozen, as the released code.
        sampling: ``with_replacement`` (every minibatch drawn independently, the released
            code) or ``without_replacement`` (shuffled passes over the training set).
    """

    beta: float = Field(0.04, gt=0)
    lam: float = Field(1e-4, ge=0)
    M: int = Field(50, ge=1)
    k0: int = Field(50, ge=1)
    q: float = Field(1.1, gt=0)
    v: float = Field(25.0, gt=0)
    iterations: int = Field(190, ge=1)  # maxIter
    last: int = Field(170, ge=0)  # average W over iterations k >= last
    r: float = 0.9
    s: float = 1.09
    batch_size: int = Field(256, gt=0)
    layer_types: Literal["all", "conv", "linear"] = "all"  # which layers the prune hits
    z_init: Literal["w", "soft_threshold"] = "w"  # Z0 = W as the released code
    train_non_weights: bool = False  # the released code freezes biases and batch norm
    sampling: Literal["with_replacement", "without_replacement"] = "with_replacement"

    @model_validator(mode="after")
    def _region(self) -> SASADMMParams:
        check_region(self.r, self.s)
        if self.last > self.iterations:
            raise ValueError(f"last {self.last} > iterations {self.iterations}: no iterate "
                             "would be averaged; allowed: 0 <= last <= iterations")
        return self


class _Minibatches:
    """An endless stream of minibatches: drawn independently with replacement (the released
    code), or shuffled passes over the data (a new order per pass, as `Batches` draws it),
    whose position can be saved and restored between two SAS-ADMM iterations. In memory, each
    batch goes through ``ctx.augment`` (drawing from the same generator, after its indices) when
    set; an `ImageSplit` draws an iteration's indices, then its augmentation seed, and decodes
    them in its loader's workers."""

    def __init__(self, ctx: Context, batch_size: int, device: torch.device,
                 replacement: bool = True):
        self.data = ctx.train
        if not isinstance(self.data, ImageSplit):
            self.data = (ctx.train[0].to(device), ctx.train[1].to(device))
        self.n, self.device = size_of(ctx.train), device
        self.batch_size, self.generator = batch_size, ctx.generator
        self.replacement, self.augment = replacement, ctx.augment
        self.batches = -(-self.n // batch_size)
        self.order: torch.Tensor | None = None
        self.position = 0

    def iteration(self, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """``steps`` batches: (images, labels, global batch size), this rank's share of each."""
        share = distributed.share if distributed.active() else None
        if isinstance(self.data, ImageSplit):
            index = [self._index() for _ in range(steps)]
            seed = int(torch.randint(1 << 62, (), generator=self.generator))
            yield from self.data.load(index, seed, self.device, share)
            return
        x, y = self.data
        for _ in range(steps):
            index = self._index().to(self.device)
            xb, yb = x[index], y[index]
            if self.augment is not None:
                xb = self.augment(xb, self.generator)
            start, length = share(len(yb)) if share is not None else (0, len(yb))
            yield xb[start : start + length], yb[start : start + length], len(yb)

    def _index(self) -> torch.Tensor:
        if self.replacement:
            return torch.randint(self.n, (self.batch_size,), generator=self.generator)
        if self.order is None or self.position == self.batches:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.position = 0
        start = self.position * self.batch_size
        self.position += 1
        return self.order[start : start + self.batch_size]

    def state_dict(self) -> dict:
        return {"order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        order = state["order"]
        self.order = None if order is None else order.cpu()
        self.position = state["position"]


class SASADMMPruning(Method):
    """SAS-ADMM, then a per-layer magnitude prune to the target (Yuan et al. 2024).

    Yuan, Bai, Jiang and Du, Neurocomputing 575:127327, 2024: the SAS-ADMM iterations of
    `SASADMM` from the pretrained model, the ergodic average of W written into the network,
    then each chosen layer pruned by magnitude to the target.

    Args:
        params: The SAS-ADMM settings and the target (`SASADMMParams`).
        key: Its entry under ``methods:``; None: ``sas_admm``.

    Examples:
        Four iterations, the inner steps growing from k0 = 3; the target is read only by the
        final prune:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.methods import Context
        >>> from sparsebench.methods.sas_admm import SASADMMPruning
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> method = SASADMMPruning(SASADMMPruning.Params(
        ...     target_sparsity=0.75, iterations=4, M=4, k0=3, last=3, batch_size=16,
        ...     beta=0.5, lam=0.01))
        >>> method.total_steps(), method.prune_epochs(64), method.shares_prune()
        (18, 5, True)
        >>> curves = method.prune(model, ctx)
        >>> [row["inner_steps"] for row in curves]
        [4, 4, 4, 6]
        >>> sparsity_summary(model)["sparsity"]
        0.75
    """

    name = "sas_admm"
    Params = SASADMMParams

    def total_steps(self) -> int:
        """The inner steps (minibatches) of all iterations: the sum of `inner_steps`.

        Returns:
            The number of minibatch gradients the prune phase takes.
        """
        p = self.params
        return sum(inner_steps(k, p.M, p.k0, p.q) for k in range(1, p.iterations + 1))

    def prune_epochs(self, n_train: int) -> int:
        """Epochs' worth of minibatches, rounded up (the exact steps are in the curves).

        Args:
            n_train: The number of training samples.

        Returns:
            ``ceil(total_steps * batch_size / n_train)``, at least 1.
        """
        return max(1, math.ceil(self.total_steps() * self.params.batch_size / n_train))

    def shares_prune(self) -> bool:
        """Whether the prune phase is shared by the levels.

        The l1 Z-step never reads the target: the level enters only in `finish`.

        Returns:
            True.
        """
        return True

    def trajectory(self, model: nn.Module, ctx: Context) -> list[dict]:
        """The SAS-ADMM iterations, ending with the ergodic average written into the model.

        Args:
            model: The pretrained model, trained in place and left unmasked.
            ctx: Data, device and seeded generator of the run; with ``ctx.checkpoint`` the
                iterations resume where a killed run stopped.

        Returns:
            One row per iteration: train loss, inner steps, eta, the residuals of
            `SASADMM.dual_step`, seconds, validation loss and accuracy, and the sparsity Z
            gives.

        Raises:
            FloatingPointError: For a training loss that is not finite.
        """
        p = self.params
        coupled = [m.weight for _, m in prunable_modules(model)]
        ids = {id(w) for w in coupled}
        free = [q for q in model.parameters() if id(q) not in ids and q.requires_grad
                ] if p.train_non_weights else []
        sas = SASADMM(coupled, free, beta=p.beta, lam=p.lam, r=p.r, s=p.s, z_init=p.z_init)
        replacement = p.sampling == "with_replacement"  # then every batch is whole
        batches = _Minibatches(ctx, p.batch_size, ctx.device, replacement=replacement)
        distributed.check_shards(p.batch_size if replacement else size_of(ctx.train),
                                 p.batch_size, f"methods.{self.key}")
        net = accelerate.prepare(model, distributed.wrap)  # by default the model itself
        curves, first = [], 1
        saved = ctx.checkpoint.take("sas_admm") if ctx.checkpoint is not None else None
        if saved is not None:  # resume after iteration ``saved["epoch"]``
            restore_training(saved, model, None, None, ctx.generator)
            sas.load_state_dict(saved["extra"]["sas"])
            batches.load_state_dict(saved["extra"]["batches"])
            curves, first = list(saved["curves"]), saved["epoch"] + 1
        for k in range(first, p.iterations + 1):
            Mk, eta = inner_steps(k, p.M, p.k0, p.q), step_size(k, p.M, p.k0, p.q, p.v)
            h, loss_sum = sas.begin(), 0.0
            started = time.perf_counter()
            model.train()
            parts = torch.zeros((), device=ctx.device)  # DDP: this rank's part of the losses
            for t, (x, y, batch) in enumerate(batches.iteration(Mk), 1):
                sas.set_md(t)
                model.zero_grad(set_to_none=True)
                with accelerate.autocast(ctx.device):  # by default no change
                    logits = net(accelerate.batch(x))
                    loss = (distributed.local_loss(logits, y, batch) if distributed.active()
                            else F.cross_entropy(logits, y))
                loss.backward()
                if distributed.active():
                    parts += loss.detach() / distributed.world()
                else:
                    loss_sum += loss.item()
                sas.inner_step(t, eta, h)
            if distributed.active():
                loss_sum = distributed.all_sum(parts).item()
            row = {"epoch": k, "train_loss": loss_sum / Mk, "inner_steps": Mk, "eta": eta,
                   **sas.dual_step(), "seconds": time.perf_counter() - started}
            if not math.isfinite(row["train_loss"]):
                raise FloatingPointError(f"sas_admm: the training loss is {row['train_loss']} "
                                         f"at iteration {k}; lower beta or raise v ({p.v})")
            if k >= p.last:
                sas.accumulate()
            row["val_loss"], row["val_accuracy"] = evaluate(model, ctx.val, device=ctx.device)
            row["sparsity"] = row["z_sparsity"]
            curves.append(row)
            if ctx.checkpoint is not None:
                ctx.checkpoint.save(training_state(
                    model, None, None, ctx.generator, tag="sas_admm", epoch=k, curves=curves,
                    extra={"sas": sas.state_dict(), "batches": batches.state_dict()}))
            if ctx.on_epoch is not None:
                ctx.on_epoch(row)
        sas.write_average()
        return curves

    def finish(self, model: nn.Module) -> None:
        """Prune each chosen layer of the model `trajectory` left by magnitude to the target.

        Args:
            model: The model as `trajectory` left it; its masks are applied in place.
        """
        apply_masks(model, self._masks(model))

    def _masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Per-layer magnitude masks at the target for the chosen layer types, dense elsewhere."""
        p, masks = self.params, {}
        targets = p.targets(model, self.key)
        for name, module in prunable_modules(model):
            is_conv = isinstance(module, nn.modules.conv._ConvNd)
            hit = p.layer_types == "all" or (p.layer_types == "conv") == is_conv
            w = module.weight.detach()
            target = targets[name] if isinstance(targets, dict) else targets
            k = keep_count(w.numel(), target) if hit else w.numel()
            masks[name] = topk_mask(w.abs(), k)
        return masks
