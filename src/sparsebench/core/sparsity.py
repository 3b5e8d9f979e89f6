"""Masks: computing them, applying them, and keeping them on disk.

Computing a mask is kept apart from applying it (as in PyTorch's ``torch/nn/utils/prune.py``).
Masks are applied with the ``torch.nn.utils.prune`` convention: the parameter ``weight`` is
re-registered as ``weight_orig`` (the same Parameter object, so optimizers keep their references)
beside a ``weight_mask`` buffer, and a forward pre-hook sets ``weight`` from the two. A user's own
tooling that knows ``torch.nn.utils.prune`` therefore understands a sparsebench model, and
``make_permanent`` turns it back into a plain model before export. The hook is `ZeroedMask`, a
``CustomFromMask`` that skips the forward multiplication while training (``weight_orig`` is kept
exactly zero where masked) and masks the gradient in place instead: the same numbers, bit for
bit, with no weight-sized allocation a step (`benchmarks/masked_epoch.py`).

Definitions follow ALGORITHMS.md section 0: the prunable parameters are the ``weight`` of every
``nn.Linear`` and ``nn.Conv*`` module. The gradual schedule is Zhu & Gupta (2017), "To prune, or
not to prune" (AGP).
"""

from __future__ import annotations

import json
import math
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from sparsebench.core.metrics import effective_weight, prunable_modules
from sparsebench.util.canonical import safetensors_bytes
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import atomic_write

Masks = dict[str, torch.Tensor]  # prunable module name -> bool tensor shaped like its weight

SCOPES = ("layer", "global")


def keep_count(numel: int, sparsity: float) -> int:
    """Number of entries a tensor of ``numel`` entries keeps at ``sparsity`` (at least one)."""
    return max(1, numel - round(sparsity * numel))


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest ``scores``; ties go to the lower flat index.

    The choice is deterministic, so a projection P_k keeps exactly k entries even when many
    scores are equal (e.g. all zero): it is the first k of a stable descending sort. Computed
    without the sort: every score above the k-th largest, then the lowest-index entries equal
    to it (``kthvalue`` is O(n); the sort took 4x as long on LeNet-300-100's first layer, and
    gradual pruning re-scores every ``frequency`` steps). Scores with a NaN take the sort.
    """
    flat = scores.detach().flatten()
    n = flat.numel()
    if k >= n:
        return torch.ones_like(flat, dtype=torch.bool).view_as(scores)
    if k <= 0 or torch.isnan(flat).any():
        order = torch.argsort(flat, descending=True, stable=True)
        mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
        mask[order[:k]] = True
        return mask.view_as(scores)
    kth = torch.kthvalue(flat, n - k + 1).values  # the k-th largest
    mask = flat > kth
    ties = torch.nonzero(flat == kth).flatten()[: k - int(mask.sum())]
    mask[ties] = True
    return mask.view_as(scores)


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight each prunable module uses now (masked where masked,
    `metrics.effective_weight`)."""
    return {name: effective_weight(module).detach() for name, module in prunable_modules(model)}


Targets = float | dict[str, float]  # one sparsity for every layer, or one per layer name


def masks_from_scores(
    scores: dict[str, torch.Tensor], sparsity: Targets, scope: str = "layer"
) -> Masks:
    """Keep the highest-scoring entries: per layer (one target, or one per layer), or over all
    layers together."""
    if scope not in SCOPES:
        raise UsageError(f"scope: unknown value {scope!r}; allowed: {', '.join(SCOPES)}")
    if isinstance(sparsity, dict) or scope == "layer":
        target = sparsity if isinstance(sparsity, dict) else dict.fromkeys(scores, sparsity)
        return {n: topk_mask(s, keep_count(s.numel(), target[n])) for n, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = topk_mask(flat, keep_count(flat.numel(), sparsity))
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return masks


def magnitude_masks(model: nn.Module, sparsity: Targets, scope: str = "layer") -> Masks:
    """Masks keeping the largest |W| (Han et al. 2015), per layer or globally."""
    scores = {n: w.abs() for n, w in effective_weights(model).items()}
    return masks_from_scores(scores, sparsity, scope)


def random_masks(
    model: nn.Module, sparsity: Targets, generator: torch.Generator, scope: str = "layer"
) -> Masks:
    """Uniformly random masks at the target sparsity: the floor every method must beat."""
    scores = {
        n: torch.rand(w.shape, generator=generator).to(w.device)
        for n, w in effective_weights(model).items()
    }
    return masks_from_scores(scores, sparsity, scope)


class ZeroedMask(prune.CustomFromMask):
    """``torch.nn.utils.prune``'s ``CustomFromMask`` for a ``weight_orig`` that is exactly zero
    wherever the mask is 0, as `apply_masks` leaves it, with the gradient masked in place.

    ``CustomFromMask`` multiplies ``weight_orig * weight_mask`` before every forward pass and
    its gradient by the mask after it: two fresh weight-sized tensors a step. Here, while
    autograd records, the layer's weight is ``weight_orig`` itself (equal to the product bit for
    bit: w * 1 = w, and a zero times 0 keeps its sign), and a post-accumulate-grad hook
    multiplies ``weight_orig.grad`` by the mask in place (the same op, ``grad * mask``, that the
    product's backward computes). A masked entry thus gets gradient exactly zero, and with its
    optimizer state zero (`zero_masked_state`) no SGD or Adam step moves it off zero. Without
    autograd (evaluation, ``prune.remove``) the weight is the product, as ``CustomFromMask``
    computes it. What it saves is the two allocations a step, not the two passes over the
    weight: on LeNet-300-100 (`benchmarks/masked_epoch.py`, 3 interleaved runs on a shared
    2-core VM) a masked epoch took 1.06, 1.15 and 1.10x an unmasked one, against 1.14, 1.11 and
    1.08x with the product, within the machine's noise; without the in-place re-zero it would
    save a pass more, but then nothing else may move a masked entry.

    Each training forward pass first multiplies ``weight_orig`` by the mask in place (no new
    tensor), so a masked entry that something else moved (an optimizer whose state was not
    zeroed) is zero again before it is used, as in the product. ``module.weight`` after a
    training step is ``weight_orig`` as it is, not the product of the last forward pass: read
    the weight in use with `metrics.effective_weight` (`effective_weights`, which magnitude
    scores use). ``prune.is_pruned``,
    ``prune.remove`` and the state_dict see the usual prune form. A copied model (deepcopy)
    registers its own hook at its first training forward pass.
    """

    def __call__(self, module: nn.Module, inputs) -> None:
        name = self._tensor_name
        orig = module._parameters[name + "_orig"]
        if torch.is_grad_enabled() and orig.requires_grad:
            self._hook(module, orig)
            with torch.no_grad():  # keeps a masked entry zero whatever moved it
                orig.mul_(module._buffers[name + "_mask"])
            weight = orig
        else:
            weight = self.apply_mask(module)
        # as BasePruningMethod.__call__'s setattr, without nn.Module's checks: the attribute
        # is neither a parameter nor a buffer, so it lives in the instance dict
        module.__dict__[name] = weight

    def _hook(self, module: nn.Module, orig: nn.Parameter) -> None:
        """Register the gradient mask on ``orig``, once (again on a copied model's)."""
        hooked = getattr(self, "_hooked", None)
        if hooked is not None and hooked[0]() is orig:
            return
        # a hook on another tensor (the model this one was copied from) stays: it is that
        # model's, and on any tensor but its layer's weight_orig it does nothing
        name, owner = self._tensor_name, weakref.ref(module)

        def mask_gradient(param: torch.Tensor) -> None:
            layer = owner()
            if layer is None or param.grad is None:
                return
            if layer._parameters.get(name + "_orig") is param:
                param.grad.mul_(layer._buffers[name + "_mask"])

        handle = orig.register_post_accumulate_grad_hook(mask_gradient)
        self._hooked = (weakref.ref(orig), handle)

    def remove(self, module: nn.Module) -> None:
        """``prune.remove``: the weight becomes the product (never ``weight_orig`` as it is),
        and the gradient mask comes off."""
        hooked = getattr(self, "_hooked", None)
        if hooked is not None:
            hooked[1].remove()
            self._hooked = None
        with torch.no_grad():
            super().remove(module)

    def __getstate__(self) -> dict:
        """Pickled without the hook (a weak reference), which the next forward pass renews."""
        return {k: v for k, v in self.__dict__.items() if k != "_hooked"}


def apply_masks(model: nn.Module, masks: Masks,
                optimizer: torch.optim.Optimizer | None = None) -> None:
    """Apply (or update) masks in the ``torch.nn.utils.prune`` form.

    The pruned entries of ``weight_orig`` are set to zero too, and with ``optimizer`` (the one
    training the model, when masks change during training) so is their optimizer state
    (`zero_masked_state`): a masked entry then has weight, gradient and state exactly zero, and
    no step moves it. Without it, a momentum buffer or Adam moment left from before the mask
    keeps moving ``weight_orig`` and decays geometrically through the subnormal floats.

    Args:
        model: the network; its prunable layers named in ``masks`` get (new) masks.
        masks: layer name -> bool mask shaped like its weight (True = kept).
        optimizer: the optimizer training ``model``, if any.
    """
    modules = dict(prunable_modules(model))
    unknown = set(masks) - set(modules)
    if unknown:
        raise KeyError(f"masks name layers the model does not have: {sorted(unknown)}")
    for name, mask in masks.items():
        module = modules[name]
        mask = mask.to(device=module.weight.device, dtype=module.weight.dtype)
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            module.weight_mask.copy_(mask)
        else:
            ZeroedMask.apply(module, "weight", mask)
        with torch.no_grad():  # masked_fill, not mul: a pruned entry is +0.0, never -0.0
            module.weight_orig.masked_fill_(mask == 0, 0.0)
            module.weight = module.weight_orig * module.weight_mask
    if optimizer is not None:
        zero_masked_state(optimizer, model)


MOMENTS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # SGD's and Adam's


def zero_masked_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Set the momentum buffer (SGD) and moments (Adam) of every masked entry to exactly zero.

    A masked entry has weight 0 in ``weight_orig`` and gradient 0 (the forward pass multiplies
    it by the mask), and SGD and Adam update each entry from its own gradient and state alone,
    so zeroing the state of masked entries changes no unmasked value and no effective weight:
    the masked entries of ``weight_orig`` simply stay 0 instead of drifting with a decaying
    remainder of momentum. Only the per-entry moments named in `MOMENTS` are touched; other
    optimizers' state (e.g. a Bregman subgradient) is the algorithm's and left alone.
    """
    for _, module in prunable_modules(model):
        if not hasattr(module, "weight_mask"):
            continue
        state = optimizer.state.get(module.weight_orig, {})
        pruned = module.weight_mask == 0
        for key in MOMENTS:
            value = state.get(key)
            if torch.is_tensor(value) and value.shape == pruned.shape:
                value.masked_fill_(pruned, 0.0)


def get_masks(model: nn.Module) -> Masks:
    """The masks currently applied, as bool tensors (layers without a mask are left out)."""
    return {
        name: module.weight_mask.detach().bool().clone()
        for name, module in prunable_modules(model)
        if hasattr(module, "weight_mask")
    }


def make_permanent(model: nn.Module) -> None:
    """Fold every mask into its weight (``prune.remove``): a plain model with exact zeros."""
    for _, module in prunable_modules(model):
        if hasattr(module, "weight_mask"):
            prune.remove(module, "weight")


def agp_sparsity(step: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """Zhu & Gupta's cubic schedule s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3.

    Before ``t0`` the sparsity is ``s_i``; after ``t0 + n * dt`` it is ``s_f``. The schedule
    changes only every ``dt`` steps (the pruning frequency), so ``t`` is rounded down to it.
    """
    if step < t0:
        return s_i
    t = min(((step - t0) // dt) * dt, n * dt)
    return s_f + (s_i - s_f) * (1 - t / (n * dt)) ** 3


def save_masks(masks: Masks, path: str | Path) -> None:
    """Write masks as packed bits (one bit an entry) in a pickle-free safetensors file."""
    tensors, shapes = {}, {}
    for name, mask in masks.items():
        bits = np.packbits(mask.detach().cpu().numpy().astype(bool).ravel())
        tensors[name] = torch.from_numpy(bits)
        shapes[name] = list(mask.shape)
    metadata = {"format": "sparsebench-masks/1", "shapes": json.dumps(shapes)}
    atomic_write(Path(path), safetensors_bytes(tensors, metadata))


def load_masks(path: str | Path) -> Masks:
    """Read masks written by `save_masks`."""
    from safetensors import safe_open

    masks = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "sparsebench-masks/1":
            raise UsageError(f"masks file: {str(path)!r} is not a sparsebench masks file")
        shapes = json.loads(meta["shapes"])
        for name in f.keys():  # noqa: SIM118 (not a dict)
            shape = shapes[name]
            numel = math.prod(shape)
            bits = np.unpackbits(f.get_tensor(name).numpy())[:numel]
            masks[name] = torch.from_numpy(bits.astype(bool)).view(shape)
    return masks
