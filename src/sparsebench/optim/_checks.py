"""Hyperparameter checks shared by the optimizers: one ValueError per bad value, naming it."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch

from sparsebench.optim.prox import REGULARIZERS, group_dims

# name -> (test, allowed range as written in the message)
_RULES = {
    "lr": (lambda x: x > 0, "must be > 0"),
    "c": (lambda x: x >= 0, "must be >= 0"),
    "mu": (lambda x: 0 < x < 1, "must be in (0, 1)"),
    "lam": (lambda x: x >= 0, "must be >= 0"),
    "delta": (lambda x: x > 0, "must be > 0"),
    "momentum": (lambda x: 0 <= x < 1, "must be in [0, 1)"),
    "eps": (lambda x: x >= 0, "must be >= 0"),
}


def mu_warning(mu: float) -> str | None:
    """gRDA's ``mu`` in (0, 0.5] is allowed but outside the authors' range: the text of the
    warning, or None. Chao et al. (2020), Theorem 3.1 and section 4: 0.5 < mu < 1."""
    if 0 < mu <= 0.5:
        return (f"mu = {mu} is at most 0.5: gRDA's sparsity results (Chao et al. 2020) "
                "need 0.5 < mu < 1")
    return None


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check(*, warn: bool = False, **hparams: Any) -> None:
    """Raise ``ValueError("Invalid <name>: <value> (<allowed>)")`` for the first bad value;
    with ``warn``, a ``UserWarning`` for an allowed value outside the authors' range (`mu_warning`).

    Numbers must be real Python numbers within their range (NaN fails every range);
    ``betas`` a pair in [0, 1); ``reg`` one of `REGULARIZERS`.
    """
    for name, value in hparams.items():
        if name == "betas":
            ok = (
                isinstance(value, (tuple, list))
                and len(value) == 2
                and all(_is_real(b) and 0 <= b < 1 for b in value)
            )
            if not ok:
                raise ValueError(f"Invalid betas: {value!r} (must be a pair in [0, 1))")
        elif name == "reg":
            if value not in REGULARIZERS:
                allowed = ", ".join(repr(r) for r in REGULARIZERS)
                raise ValueError(f"Invalid reg: {value!r} (must be one of {allowed})")
        else:
            test, allowed = _RULES[name]
            if not (_is_real(value) and test(value)):
                raise ValueError(f"Invalid {name}: {value!r} ({allowed})")
            if warn and name == "mu" and (text := mu_warning(value)):
                warnings.warn(text, UserWarning, stacklevel=3)


def check_group(group: dict[str, Any], names: Iterable[str]) -> None:
    """Check a parameter group's hyperparameters ``names`` and, for a group ``reg``, its shapes."""
    check(warn=True, **{name: group[name] for name in names})  # each group warns once
    reg = group.get("reg")
    if reg in ("l12_row", "l12_kernel"):
        for p in group["params"]:
            group_dims(reg, p.shape)  # raises ValueError for a tensor without such groups


def check_grad(p: torch.Tensor) -> torch.Tensor:
    if p.grad.is_sparse:
        raise RuntimeError("sparse gradients are not supported")
    return p.grad


def _fused_devices() -> tuple[str, ...]:
    # the devices with PyTorch's fused optimizer kernels in this build (CPU since torch 2.4)
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # pragma: no cover - older torch
        return ("cuda",)
    return tuple(_get_fused_kernels_supported_devices())


#: Devices on which the fused paths (torch._fused_adam_, torch._fused_sgd_) run.
FUSED_DEVICES = _fused_devices()


def fusable(p: torch.Tensor) -> bool:
    """Whether a parameter can take a fused kernel: floating, real, on a fused device."""
    return p.device.type in FUSED_DEVICES and p.is_floating_point() and not p.is_complex()


def check_fused(fused: Any, params: Iterable[torch.Tensor] = ()) -> None:
    """``fused`` is None, True or False, and True only for parameters that can take it."""
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(f"Invalid fused: {fused!r} (must be None, True or False)")
    if fused and not all(fusable(p) for p in params):
        raise ValueError(
            f"Invalid fused: True (needs floating parameters on {', '.join(FUSED_DEVICES)})"
        )


class CheckedOptimizer(torch.optim.Optimizer):
    """An optimizer whose every parameter group is validated against ``hparams``.

    A bad group (also one added later with ``add_param_group``) is refused and left out. A
    ``fused: None`` flag is resolved once per group, as torch.optim.Adam does, so that
    ``load_state_dict`` puts the step counts where the kernel wants them.
    """

    hparams: tuple[str, ...] = ()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            check_group(group, self.hparams)
            if "fused" in group:
                check_fused(group["fused"], group["params"])
        except ValueError:
            self.param_groups.pop()
            raise
        if "fused" in group and group["fused"] is None:
            group["fused"] = all(fusable(p) for p in group["params"])

    @staticmethod
    def with_grads(group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The group's parameters that have a gradient, and those gradients (dense only).

        The lists for one ``torch._foreach_*`` call per group instead of a Python-side op per
        parameter.
        """
        params, grads = [], []
        for p in group["params"]:
            grad = p.grad
            if grad is not None:
                if grad.is_sparse:
                    check_grad(p)  # raises
                params.append(p)
                grads.append(grad)
        return params, grads

    @staticmethod
    def closure_loss(closure: Any) -> Any:
        """The loss of ``closure`` re-evaluated with gradients on, or None without one."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()
