"""Masked retrain (ALGORITHMS.md section 7).

The model arrives with its masks applied in the ``torch.nn.utils.prune`` form: the forward pass
sees W * M, the gradient of the masked entries is zero, and `sparsity.apply_masks` has zeroed
them in ``weight_orig`` too, so momentum and weight decay leave them exactly zero after every
step. After training the masks are re-applied (a guard, not a repair) and kept.
"""

from __future__ import annotations

from torch import nn

from sparsebench.core.sparsity import apply_masks, get_masks
from sparsebench.core.train import Phase, fit
from sparsebench.methods.base import Context


def masked_retrain(model: nn.Module, phase: Phase, ctx: Context) -> list[dict]:
    """Fine-tune ``model`` with every mask fixed.

    Args:
        model: The pruned model, its masks applied in the ``torch.nn.utils.prune`` form.
        phase: Epochs, batch size, optimizer and schedule of the retrain.
        ctx: Data, device and seeded generator of the run.

    Returns:
        One row of figures per epoch (`sparsebench.core.train.fit`); empty for 0 epochs.

    Examples:
        After a magnitude prune, two epochs of SGD with momentum and weight decay change the
        kept weights, and every masked weight stays exactly zero:

        >>> import torch
        >>> from torch import nn
        >>> from sparsebench.core.schema import OptimizerParams, Phase
        >>> from sparsebench.core.sparsity import apply_masks, magnitude_masks
        >>> from sparsebench.methods import Context
        >>> from sparsebench.methods.retrain import masked_retrain
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        >>> ctx = Context(train=(x, y), val=(x, y), device=torch.device("cpu"),
        ...               generator=torch.Generator().manual_seed(0), seed=0)
        >>> apply_masks(model, magnitude_masks(model, 0.75))
        >>> pruned = model[0].weight.detach().clone()
        >>> optim = OptimizerParams(lr=0.1, momentum=0.9, weight_decay=1e-4)
        >>> curves = masked_retrain(model, Phase(2, 16, optim, "retrain"), ctx)
        >>> [row["epoch"] for row in curves], [row["sparsity"] for row in curves]
        ([1, 2], [0.75, 0.75])
        >>> kept = model[0].weight_mask.bool()
        >>> bool((model[0].weight[~kept] == 0).all()), torch.equal(model[0].weight, pruned)
        (True, False)
    """
    if phase.epochs == 0:
        return []
    masks = get_masks(model)
    curves = fit(model, ctx.train, ctx.val, phase, generator=ctx.generator, device=ctx.device,
                 progress=ctx.progress, on_epoch=ctx.on_epoch, resume=ctx.resume(),
                 augment=ctx.augment)
    apply_masks(model, masks)
    return curves
