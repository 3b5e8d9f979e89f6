"""Operating points of a suite: the compression levels every method is run at.

A level is a compression ratio c = numel / nonzeros over all prunable weights (ALGORITHMS.md
section 0), so its sparsity is 1 - 1/c. A suite lists its levels once (as compression ratios or
as sparsities); a method may run a subset (``methods.<key>.levels``).

How a level becomes per-layer targets (the suite's rule, the same for every target-driven
method): each layer l keeps a density d_l = clip(alpha * w_l, f_l, 1), where w_l is the layer's
relative keep ratio (1 for every layer, or the method's own ``layer_sparsity`` profile, e.g. the
ADMM paper's LeNet-5 keep ratios, scaled as a whole), f_l is the classifier floor
(``levels.classifier_density`` for the last prunable layer, 0 elsewhere), and alpha is solved
so that sum_l d_l n_l = N / c: the level holds exactly over all prunable weights, and at 128x
the output layer still keeps a tenth of its weights instead of 8 of 1,000 (which would cut
classes off), the other layers being pruned harder. Regularisation-driven methods have no
target: their strength is calibrated per level (`sparsebench.pipeline.calibrate`).
"""

from __future__ import annotations

import math

from sparsebench.util.errors import UsageError


def level_name(compression: float) -> str:
    """The directory and display name of a level: ``c8``, ``c71.2``."""
    return f"c{compression:.4g}"


def level_sparsity(compression: float) -> float:
    return 1.0 - 1.0 / compression


def layer_densities(sizes: dict[str, int], compression: float, *,
                    profile: dict[str, float] | None = None, classifier_density: float = 0.0,
                    key: str = "levels") -> dict[str, float]:
    """Per-layer densities d_l = clip(alpha w_l, f_l, 1) with sum d_l n_l = N / compression.

    Args:
        sizes: layer name -> numel of its weight, in model order (the last is the classifier).
        compression: the level c > 1.
        profile: layer name -> relative keep ratio w_l > 0 (default 1 for every layer).
        classifier_density: f of the last layer (a floor), 0 for none.
        key: the params key named in an error.

    Raises:
        UsageError: the floor alone keeps more weights than the level allows.
    """
    names = list(sizes)
    total = sum(sizes.values())
    budget = total / compression
    weight = {n: (profile or {}).get(n, 1.0) for n in names}
    floor = dict.fromkeys(names, 0.0)
    floor[names[-1]] = classifier_density
    if sum(floor[n] * sizes[n] for n in names) > budget:
        raise UsageError(
            f"{key}.classifier_density: {classifier_density} keeps "
            f"{classifier_density * sizes[names[-1]]:.0f} weights of the last layer, more than "
            f"the {budget:.0f} that level {compression:g}x allows over all layers; allowed: a "
            f"floor below {budget / sizes[names[-1]]:.4g}")

    def kept(alpha: float) -> float:
        return sum(min(1.0, max(floor[n], alpha * weight[n])) * sizes[n] for n in names)

    low, high = 0.0, 1.0 / min(weight.values())  # kept(high) = total >= budget
    for _ in range(200):  # bisection to float precision
        mid = (low + high) / 2
        low, high = (mid, high) if kept(mid) < budget else (low, mid)
    return {n: min(1.0, max(floor[n], high * weight[n])) for n in names}


def layer_targets(sizes: dict[str, int], compression: float, **kwargs) -> dict[str, float]:
    """`layer_densities` as target sparsities, 1 - d_l (what the methods take)."""
    return {n: max(0.0, 1.0 - d) for n, d in layer_densities(sizes, compression, **kwargs).items()}


def within(achieved: float, level: float, tolerance: float) -> bool:
    """Whether an achieved compression is within ``tolerance`` (relative) of the level."""
    return math.isfinite(achieved) and abs(achieved / level - 1.0) <= tolerance


MAX_COMPRESSION = 1e9  # an all-zero model's infinite compression, for the interpolation
