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
    """No pruning: the pretrained model as it is, the reference accuracy.

    Args:
        params: The common keys (`MethodParams`).
        key: Its entry under ``methods:``; None: ``dense``.

    Examples:
        The prune phase changes nothing and applies no mask:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.methods import Context
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> from sparsebench.methods.baselines import Dense
        >>> before = [p.detach().clone() for p in model.parameters()]
        >>> method = Dense(Dense.Params())
        >>> method.prune(model, ctx), method.kind()
        ([], 'reference')
        >>> all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        True
        >>> hasattr(model[0], "weight_mask")
        False
    """

    name = "dense"
    Params = MethodParams

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        """Leave ``model`` as it is.

        Args:
            model: The pretrained model, left unchanged.
            ctx: The run's context (not used).

        Returns:
            No curves (an empty list): nothing is trained.
        """
        return []


class Magnitude(Method):
    """One-shot magnitude pruning to ``target_sparsity`` (Han et al., NeurIPS 2015).

    Han, Pool, Tran and Dally, "Learning both weights and connections for efficient neural
    networks", NeurIPS 2015: the mask keeps the largest |W|, per layer (``scope: layer``) or
    over all prunable layers together (``scope: global``).

    Args:
        params: The target sparsity and scope (`SparsityParams`).
        key: Its entry under ``methods:``; None: ``magnitude``.

    Examples:
        Per layer, each prunable weight keeps its 25% largest entries by magnitude; the
        others are exact zeros:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.methods import Context
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.methods.baselines import Magnitude
        >>> magnitude = model[0].weight.detach().abs().clone()
        >>> method = Magnitude(Magnitude.Params(target_sparsity=0.75))
        >>> method.prune(model, ctx)
        []
        >>> sparsity_summary(model)["sparsity"]
        0.75
        >>> kept = model[0].weight_mask.bool()
        >>> bool(magnitude[kept].min() >= magnitude[~kept].max())
        True
        >>> bool((model[0].weight[~kept] == 0).all())
        True
    """

    name = "magnitude"
    Params = SparsityParams

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        """Apply the magnitude masks at the target to ``model``.

        Args:
            model: The pretrained model; its masks are applied in place.
            ctx: The run's context (not used: the masks depend on the weights alone).

        Returns:
            No curves (an empty list): the prune is one-shot.
        """
        p = self.params
        apply_masks(model, magnitude_masks(model, p.targets(model, self.key), p.scope))
        return []


class Random(Method):
    """A random mask at ``target_sparsity``, drawn from the run's seeded generator.

    The floor every method must beat (Blalock, Gonzalez Ortiz, Frankle and Guttag, "What is
    the state of neural network pruning?", MLSys 2020).

    Args:
        params: The target sparsity and scope (`SparsityParams`).
        key: Its entry under ``methods:``; None: ``random``.

    Examples:
        The target is reached, and the same seed draws the same mask:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.methods import Context
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> from sparsebench.methods.baselines import Random
        >>> method = Random(Random.Params(target_sparsity=0.75))
        >>> method.prune(model, ctx)
        []
        >>> sparsity_summary(model)["sparsity"]
        0.75
        >>> again = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> ctx.generator = torch.Generator().manual_seed(0)
        >>> _ = method.prune(again, ctx)
        >>> torch.equal(again[0].weight_mask, model[0].weight_mask)
        True
    """

    name = "random"
    Params = SparsityParams

    def prune(self, model: nn.Module, ctx: Context) -> list[dict]:
        """Apply random masks at the target to ``model``.

        Args:
            model: The pretrained model; its masks are applied in place.
            ctx: The run's context: the masks are drawn from ``ctx.generator``.

        Returns:
            No curves (an empty list): the prune is one-shot.
        """
        p = self.params
        targets = p.targets(model, self.key)
        apply_masks(model, random_masks(model, targets, ctx.generator, p.scope))
        return []
