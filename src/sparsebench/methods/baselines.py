"""The baselines every method must beat (Blalock et al. 2020; ALGORITHMS.md section 1).

- ``dense``: no pruning; the reference accuracy.
- ``magnitude``: one-shot pruning of the smallest |W| (Han et al. 2015), per layer or globally.
- ``random``: a uniformly random mask at the same sparsity: the floor.
"""

from __future__ import annotations

from torch import nn

from sparsebench.core.sparsity import apply_masks, magnitude_masks, random_masks
from sparsebench.methods.base import Context, Method, MethodParams, SparsityParams


class Dense(Method):
    """No pruning: the pretrained model as it is."""

    name = "dense"
    Params = MethodParams

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        return []


class Magnitude(Method):
    """One-shot magnitude pruning to ``target_sparsity`` (Han et al., NeurIPS 2015)."""

    name = "magnitude"
    Params = SparsityParams

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        p = self.params
        apply_masks(model, magnitude_masks(model, p.targets(model, self.key), p.scope))
        return []


class Random(Method):
    """A random mask at ``target_sparsity``, drawn from the run's seeded generator."""

    name = "random"
    Params = SparsityParams

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        p = self.params
        targets = p.targets(model, self.key)
        apply_masks(model, random_masks(model, targets, ctx.generator, p.scope))
        return []
