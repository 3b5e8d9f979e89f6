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
    """Fine-tune ``model`` with every mask fixed; return per-epoch curves."""
    if phase.epochs == 0:
        return []
    masks = get_masks(model)
    curves = fit(model, ctx.train, ctx.val, phase, generator=ctx.generator, device=ctx.device,
                 progress=ctx.progress, on_epoch=ctx.on_epoch, resume=ctx.resume(),
                 augment=ctx.augment)
    apply_masks(model, masks)
    return curves
