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
    """Gradual magnitude pruning (AGP) while training."""

    name = "gmp"
    Params = GMPParams

    def prune_epochs(self, n_train: int) -> int:
        return self.params.epochs

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
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
