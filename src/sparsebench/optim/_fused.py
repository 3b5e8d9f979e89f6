"""SGD's fused momentum kernel (``torch._fused_sgd_``) over lists of tensors, for LinBreg and
ProxSGD: one pass per tensor for ``buf = momentum * buf + (1 - dampening) * grad`` and
``target -= lr * buf``."""

from __future__ import annotations

import torch


def fused_sgd_momentum_(
    targets: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    *,
    momentum: float,
    dampening: float,
    lr: float,
    is_first_step: bool = False,
) -> None:
    """The momentum step in place, one kernel call per (device, dtype).

    With ``is_first_step`` the kernel sets ``buf = grad`` (``bufs`` may be uninitialised)
    and steps ``target -= lr * grad``, as torch.optim.SGD does at its first step.
    """
    lists: dict[tuple[torch.device, torch.dtype], tuple[list, list, list]] = {}
    for target, grad, buf in zip(targets, grads, bufs, strict=True):
        columns = lists.setdefault((target.device, target.dtype), ([], [], []))
        columns[0].append(target)
        columns[1].append(grad)
        columns[2].append(buf)
    for group_targets, group_grads, group_bufs in lists.values():
        torch._fused_sgd_(
            group_targets,
            group_grads,
            group_bufs,
            weight_decay=0.0,
            momentum=momentum,
            lr=lr,
            dampening=dampening,
            nesterov=False,
            maximize=False,
            is_first_step=is_first_step,
        )
