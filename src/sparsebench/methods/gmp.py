"""Gradual magnitude pruning with the cubic schedule (Zhu & Gupta 2017, "To prune, or not to
prune"; ALGORITHMS.md section 1).

From the pretrained model, train for ``epochs`` epochs; between ``start_epoch`` and
``end_epoch`` re-prune by magnitude every ``frequency`` steps to
s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, then keep training with the final mask.
Each re-pruning zeroes the optimizer state of the masked entries too
(`sparsebench.core.sparsity.zero_masked_state`), so they stay exactly zero rather than decaying
through the subnormal floats; no unmasked value changes.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import nn

from sparsebench.core.sparsity import agp_sparsity, apply_masks, magnitude_masks
from sparsebench.core.train import Phase, fit, make_optimizer
from sparsebench.data.stream import size_of
from sparsebench.methods.base import Context, Method, OptimizerPhaseParams


class GMPParams(OptimizerPhaseParams):
    """The schedule of gradual magnitude pruning; plus the keys of `OptimizerPhaseParams`.

    Rule: ``start_epoch < end_epoch <= epochs``.

    Attributes:
        initial_sparsity: s_i, the sparsity the schedule starts from.
        start_epoch: t0 in epochs (fractions allowed): the first re-pruning.
        end_epoch: The epoch (fractions allowed) by which the target s_f is reached.
        frequency: dt, optimizer steps between two re-prunings.
    """

    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    start_epoch: float = Field(0.0, ge=0)
    end_epoch: float = Field(7.0, gt=0)
    frequency: int = Field(100, gt=0)  # dt: optimizer steps between two re-prunings

    @model_validator(mode="after")
    def _ordered(self) -> GMPParams:
        if not self.start_epoch < self.end_epoch <= self.epochs:
            raise ValueError(
                f"need start_epoch < end_epoch <= epochs, got {self.start_epoch}, "
                f"{self.end_epoch}, {self.epochs}"
            )
        return self


class GMP(Method):
    """Gradual magnitude pruning (AGP) while training.

    Zhu and Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
    compression", 2017 (arXiv:1710.01878): every ``frequency`` steps between ``start_epoch``
    and ``end_epoch`` the weights are pruned by magnitude to the sparsity of the cubic
    schedule s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, then training goes on with the
    final mask.

    Args:
        params: The schedule, the target and the training phase (`GMPParams`).
        key: Its entry under ``methods:``; None: ``gmp``.

    Examples:
        Three epochs of 4 steps, the target reached at the end of epoch 2; the sparsity grows
        along the schedule, and the final masks are applied:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.methods import Context
        >>> from sparsebench.methods.gmp import GMP
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> method = GMP(GMP.Params(target_sparsity=0.75, epochs=3, end_epoch=2, frequency=2,
        ...                         batch_size=16))
        >>> method.prune_epochs(64)
        3
        >>> curves = method.prune(model, ctx)
        >>> [round(row["sparsity"], 2) for row in curves]
        [0.66, 0.75, 0.75]
        >>> kept = model[0].weight_mask.bool()
        >>> bool((model[0].weight_orig[~kept] == 0).all())
        True
    """

    name = "gmp"
    Params = GMPParams

    def prune_epochs(self, n_train: int) -> int:
        """The prune phase's epochs.

        Args:
            n_train: The number of training samples (not needed: the phase is in epochs).

        Returns:
            ``epochs``.
        """
        return self.params.epochs

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        """Train ``model`` while pruning it along the schedule; leave the final masks applied.

        Each re-pruning also zeroes the optimizer state of the masked entries, so they stay
        exactly zero.

        Args:
            model: The pretrained model, trained and pruned in place.
            ctx: Data, device and seeded generator of the run.

        Returns:
            One row of figures per epoch (`sparsebench.core.train.fit`).
        """
        p = self.params
        steps = -(-size_of(ctx.train) // p.batch_size)  # batches an epoch
        t0 = round(p.start_epoch * steps)
        n = max(1, round((p.end_epoch - p.start_epoch) * steps) // p.frequency)
        final = p.targets(model, self.key)

        def at(step: int) -> float | dict[str, float]:
            def s_t(s_f: float) -> float:
                return agp_sparsity(step, p.initial_sparsity, s_f, t0, n, p.frequency)
            return {k: s_t(v) for k, v in final.items()} if isinstance(final, dict) else s_t(final)

        def reprune(step: int) -> None:
            if step < t0 or (step - t0) % p.frequency or step > t0 + n * p.frequency:
                return
            apply_masks(model, magnitude_masks(model, at(step), p.scope), optimizer)

        if p.initial_sparsity > 0 and t0 == 0:
            apply_masks(model, magnitude_masks(model, p.initial_sparsity, p.scope))
        phase = Phase(p.epochs, p.batch_size, p.optimizer, "gmp")
        optimizer = make_optimizer(model.parameters(), phase.optim)  # re-pruning zeroes its state
        curves = fit(model, ctx.train, ctx.val, phase, generator=ctx.generator,
                     device=ctx.device, optimizer=optimizer, after_step=reprune,
                     progress=ctx.progress, on_epoch=ctx.on_epoch, resume=ctx.resume(),
                     augment=ctx.augment)
        apply_masks(model, magnitude_masks(model, final, p.scope))
        return curves
