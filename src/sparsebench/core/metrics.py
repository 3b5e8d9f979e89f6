"""Sparsity, compression and FLOP metrics for pruned models.

The metrics follow ShrinkBench (Blalock, Gonzalez Ortiz, Frankle and Guttag, 2020,
"What is the state of neural network pruning?", MLSys 2020) and the definitions in
section 0 of the project's ALGORITHMS.md:

* **Prunable parameters** are the ``weight`` of every :class:`torch.nn.Linear` and
  :class:`torch.nn.Conv1d` / ``Conv2d`` / ``Conv3d`` module, except the layers the model keeps
  dense (``model.exclude``, carried as ``model.arch["exclude"]``: a paper's dense first conv or
  classifier). Biases, normalisation parameters and excluded layers are not prunable and are
  not part of the prunable figures; they count in ``compression_all`` as they are.
* **Sparsity** is ``zeros / numel`` over the prunable weights and **density** is
  ``1 - sparsity``. (The Bregman authors' code calls density "sparsity"; here both are
  named for what they are.)
* **Compression ratio** is ``numel / nonzeros`` over the prunable weights (ShrinkBench:
  LeNet-5 at 430.5K / 6.05K = 71.2x). ``compression_all`` is the same ratio over
  all parameters, where non-prunable parameters count as they are (their zeros count as
  zeros).
* **FLOPs** are the dense multiply-adds of one forward pass (batch of 1) of the Linear and
  Conv layers (excluded ones too: they run); **nonzero FLOPs** count only the multiply-adds
  whose weight is nonzero, and the **theoretical speedup** is ``flops / flops_nonzero``
  (ShrinkBench's ``flops_nz`` and ``flop_speedup``).

Models pruned with :mod:`torch.nn.utils.prune` are supported: the effective weight is
``weight_mask * weight_orig``, computed when read (the ``module.weight`` attribute is only what
the last forward pass used), and such a module's
weight is counted once, through its ``weight_orig`` parameter, never through the mask
buffer.

Division conventions (used everywhere in this module):

* a ratio whose denominator of nonzeros is 0 while its numerator is positive
  (all prunable weights zero) is ``float("inf")``;
* an empty set (no prunable weights, or no FLOPs at all) is treated as dense: sparsity
  0.0, density 1.0, compression ratio 1.0, speedup 1.0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "PRUNABLE_TYPES",
    "count_flops",
    "evaluate_model_metrics",
    "is_excluded",
    "layer_sparsity",
    "linear_conv_modules",
    "prunable_modules",
    "sparsity_summary",
]

#: Module types whose ``weight`` is prunable.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

_ORIG_SUFFIX = "_orig"
_MASK_SUFFIX = "_mask"


# --------------------------------------------------------------------------- helpers


def _ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator`` with this module's conventions.

    Args:
        numerator: Total count (numel or dense FLOPs).
        denominator: Nonzero count (nonzeros or nonzero FLOPs).

    Returns:
        The ratio; ``inf`` if only the denominator is 0; ``1.0`` if both are 0.
    """
    if denominator == 0:
        return float("inf") if numerator > 0 else 1.0
    return numerator / denominator


def _nonzeros(tensor: torch.Tensor) -> int:
    """Number of nonzero entries of ``tensor`` as a Python int."""
    return int(torch.count_nonzero(tensor.detach()).item())


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight a prunable module uses now: ``weight_mask * weight_orig`` under
    ``nn.utils.prune`` (the product ``CustomFromMask`` computes, from the current values),
    else ``module.weight``."""
    orig = module._parameters.get("weight" + _ORIG_SUFFIX)
    mask = module._buffers.get("weight_mask")
    if orig is not None and mask is not None:
        return mask.to(dtype=orig.dtype) * orig
    return module.weight


def _weight_storage(module: nn.Module) -> torch.Tensor:
    """The parameter that stores a prunable module's weight (``weight_orig`` if pruned).

    Used to identify weights shared between modules, so they are counted once.
    """
    orig = module._parameters.get("weight" + _ORIG_SUFFIX)
    return orig if orig is not None else module.weight


def _sparsity_fields(numel: int, nonzeros: int) -> dict[str, float]:
    """Sparsity and density of a set of ``numel`` weights with ``nonzeros`` nonzeros."""
    sparsity = (numel - nonzeros) / numel if numel > 0 else 0.0
    return {"sparsity": sparsity, "density": 1.0 - sparsity}


# --------------------------------------------------------------------------- public API


def is_excluded(name: str, exclude: list[str] | tuple[str, ...]) -> bool:
    """Whether the layer ``name`` is one of ``exclude`` or inside one of them."""
    return any(name == e or name.startswith(f"{e}.") for e in exclude)


def linear_conv_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Linear`` / ``nn.Conv*`` module, the excluded ones included."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """List the modules whose ``weight`` is prunable.

    Args:
        model: Any model, pruned with ``torch.nn.utils.prune`` or not.

    Returns:
        ``(name, module)`` pairs for every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` /
        ``nn.Conv3d`` module, in ``model.named_modules()`` order, but those the model keeps
        dense (``model.arch["exclude"]``: layer names, or modules holding them). Names are the
        dotted names of ``named_modules()`` (the empty string if ``model`` itself is prunable).
    """
    arch = getattr(model, "arch", None)
    exclude = arch.get("exclude") or () if isinstance(arch, dict) else ()
    return [(name, m) for name, m in linear_conv_modules(model) if not is_excluded(name, exclude)]


def layer_sparsity(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per-layer sparsity of the prunable weights.

    Args:
        model: Any model, pruned with ``torch.nn.utils.prune`` or not.

    Returns:
        For each prunable layer name, ``{"numel", "nonzeros", "sparsity", "density"}``,
        computed on the effective (masked) weight. ``numel`` and ``nonzeros`` are ints;
        a layer with an empty weight has sparsity 0.0 and density 1.0.
    """
    result: dict[str, dict[str, float]] = {}
    for name, module in prunable_modules(model):
        weight = effective_weight(module)
        numel = weight.numel()
        nonzeros = _nonzeros(weight)
        result[name] = {"numel": numel, "nonzeros": nonzeros, **_sparsity_fields(numel, nonzeros)}
    return result


def _all_parameter_counts(model: nn.Module) -> tuple[int, int]:
    """Numel and nonzeros over all parameters of ``model``, each parameter counted once.

    A parameter ``X_orig`` of a module pruned with ``torch.nn.utils.prune`` (that is, with
    an ``X_mask`` buffer) contributes its numel once and the nonzeros of the effective
    tensor ``module.X``; mask buffers are not parameters and are not counted.
    """
    seen: set[int] = set()
    total = 0
    nonzero = 0
    for module in model.modules():
        for pname, param in module._parameters.items():
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            effective = param
            if pname.endswith(_ORIG_SUFFIX):
                base = pname[: -len(_ORIG_SUFFIX)]
                if base + _MASK_SUFFIX in module._buffers and hasattr(module, base):
                    effective = getattr(module, base)
            total += param.numel()
            nonzero += _nonzeros(effective)
    return total, nonzero


def sparsity_summary(model: nn.Module) -> dict[str, float]:
    """Whole-model sparsity and compression figures.

    Args:
        model: Any model, pruned with ``torch.nn.utils.prune`` or not.

    Returns:
        A flat dict with

        * ``"numel"``, ``"nonzeros"``: counts over the prunable weights (ints);
        * ``"sparsity"``, ``"density"``: ``zeros / numel`` and ``1 - sparsity`` over them;
        * ``"compression"``: ``numel / nonzeros`` over them;
        * ``"params_total"``, ``"params_nonzero"``: counts over all parameters (ints);
        * ``"compression_all"``: ``params_total / params_nonzero``.

        A compression ratio is ``inf`` when there are weights but none is nonzero. A
        weight shared by several prunable modules is counted once.
    """
    seen: set[int] = set()
    numel = 0
    nonzeros = 0
    for _, module in prunable_modules(model):
        key = id(_weight_storage(module))
        if key in seen:
            continue
        seen.add(key)
        weight = effective_weight(module)
        numel += weight.numel()
        nonzeros += _nonzeros(weight)
    params_total, params_nonzero = _all_parameter_counts(model)
    return {
        **_sparsity_fields(numel, nonzeros),
        "nonzeros": nonzeros,
        "numel": numel,
        "compression": _ratio(numel, nonzeros),
        "params_total": params_total,
        "params_nonzero": params_nonzero,
        "compression_all": _ratio(params_total, params_nonzero),
    }


def _first_parameter(model: nn.Module) -> torch.Tensor | None:
    """The model's first parameter (or buffer if it has none), or ``None``."""
    for tensor in model.parameters():
        return tensor
    for tensor in model.buffers():
        return tensor
    return None


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Dense and nonzero multiply-adds of one forward pass on a single sample.

    Only Linear and Conv (1d/2d/3d) layers are counted: batch norm, activations, pooling,
    bias additions and other operations are ignored, as in ShrinkBench. For a layer with
    effective weight ``W`` whose output has ``P`` positions per output channel / feature
    (``out_h * out_w`` for Conv2d, the product of the leading non-batch dims for Linear),

    * ``flops = P * W.numel()`` (for Conv2d ``out_h * out_w * out_ch * in_ch/groups * kh *
      kw``, for Linear ``P * in * out``);
    * ``flops_nonzero = P * nnz(W)``.

    A layer that is called several times in one forward pass is counted each time; a layer
    that is not called has 0 FLOPs. The FLOPs are measured with forward hooks on a dummy
    zero input of shape ``(1, *input_shape)`` under ``torch.no_grad()``, on the device and
    (floating) dtype of the model's first parameter, with the model in eval mode. Every
    module's training flag is restored and every hook removed afterwards, also if the
    forward pass raises.

    Args:
        model: Any model, pruned with ``torch.nn.utils.prune`` or not.
        input_shape: Shape of one sample without the batch dim, e.g. ``(C, H, W)``.

    Returns:
        ``{"flops", "flops_nonzero", "flop_speedup", "layers"}`` where
        ``flop_speedup = flops / flops_nonzero`` (``inf`` if there are FLOPs but no
        nonzero ones, 1.0 if there are no FLOPs) and ``layers`` maps each Linear/Conv layer
        name to ``{"flops", "flops_nonzero"}`` (ints).
    """
    layers: dict[str, dict[str, int]] = {
        name: {"flops": 0, "flops_nonzero": 0} for name, _ in linear_conv_modules(model)
    }
    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(_flop_hook(layers[name]))
               for name, m in linear_conv_modules(model)]
    try:
        model.eval()
        with torch.no_grad():
            model(_dummy_input(model, input_shape))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training

    flops = sum(layer["flops"] for layer in layers.values())
    flops_nonzero = sum(layer["flops_nonzero"] for layer in layers.values())
    return {
        "flops": flops,
        "flops_nonzero": flops_nonzero,
        "flop_speedup": _ratio(flops, flops_nonzero),
        "layers": layers,
    }


def _flop_hook(counts: dict[str, int]):
    """A forward hook adding one call's dense and nonzero multiply-adds to ``counts``."""
    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        weight = effective_weight(module)
        out_features = (module.out_features if isinstance(module, nn.Linear)
                        else module.out_channels)
        positions = output.numel() // out_features if out_features > 0 else 0
        counts["flops"] += positions * weight.numel()
        counts["flops_nonzero"] += positions * _nonzeros(weight)

    return hook


def _dummy_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A zero batch of one sample on the device and (floating) dtype of the model's first
    parameter."""
    reference = _first_parameter(model)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = (
        reference.dtype
        if reference is not None and reference.is_floating_point()
        else torch.get_default_dtype()
    )
    return torch.zeros((1, *input_shape), device=device, dtype=dtype)


def kind_density(model: nn.Module) -> dict[str, float]:
    """Density by layer kind, as the Bregman paper reports it (Bungert et al. 2022, table 3).

    ``conv_kernel_density``: the share of conv kernels (``weight[o, i]``, all kh x kw entries)
    with a nonzero entry; ``linear_density``: the share of nonzero linear weights. A key is
    left out when the model has no layer of that kind.
    """
    kernels = nonzero_kernels = linear = nonzero_linear = 0
    for _, module in prunable_modules(model):
        w = effective_weight(module).detach()
        if isinstance(module, nn.Linear):
            linear += w.numel()
            nonzero_linear += int(torch.count_nonzero(w))
        else:
            per_kernel = w.flatten(2) if w.dim() > 2 else w.unsqueeze(-1)
            kernels += per_kernel.shape[0] * per_kernel.shape[1]
            nonzero_kernels += int((per_kernel != 0).any(-1).sum())
    out = {}
    if kernels:
        out["conv_kernel_density"] = nonzero_kernels / kernels
    if linear:
        out["linear_density"] = nonzero_linear / linear
    return out


def evaluate_model_metrics(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """All metrics of this module in one dict.

    Args:
        model: Any model, pruned with ``torch.nn.utils.prune`` or not.
        input_shape: Shape of one sample without the batch dim, e.g. ``(C, H, W)``.

    Returns:
        The flat keys of :func:`sparsity_summary` and ``"flops"``, ``"flops_nonzero"``,
        ``"flop_speedup"`` of :func:`count_flops`, plus ``"layers"``: per prunable
        layer ``{"numel", "nonzeros", "sparsity", "density", "flops", "flops_nonzero"}``.
    """
    flops = count_flops(model, input_shape)
    per_layer = layer_sparsity(model)
    layers = {name: {**per_layer[name], **flops["layers"][name]} for name in per_layer}
    return {
        **sparsity_summary(model),
        "flops": flops["flops"],
        "flops_nonzero": flops["flops_nonzero"],
        "flop_speedup": flops["flop_speedup"],
        **kind_density(model),
        "layers": layers,
    }
