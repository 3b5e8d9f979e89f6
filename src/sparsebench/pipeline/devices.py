"""Where a stage's runs execute: the device, the worker processes and threads for this machine,
and what cannot train over torchrun's ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparsebench.core import distributed
from sparsebench.core.models import MODELS
from sparsebench.core.train import resolve_device
from sparsebench.pipeline.workers import check_workers, default_workers
from sparsebench.suite.params import Params
from sparsebench.util.errors import UsageError

if TYPE_CHECKING:
    import torch


def workers_of(params: Params) -> tuple[int, int, bool]:
    """(workers, threads, in_process) for this machine; warns when they exceed the cores.
    Under torchrun: one run at a time in this process, over all ranks."""
    import warnings

    device = stage_device(params)
    threads = params.execution.threads
    if distributed.active():
        return 1, threads, True
    workers = params.execution.workers or default_workers(threads, device)
    if text := check_workers(workers, threads):
        warnings.warn(text, UserWarning, stacklevel=2)
    return workers, threads, device.type != "cpu"


def stage_device(params: Params) -> torch.device:
    """The device of this stage's process: ``device``, or this rank's under torchrun (joining
    its process group; refused for a batch-norm model on the CPU, see `check_distributed`)."""
    device = resolve_device(params.device)
    if distributed.launched():
        device = distributed.setup(device)
        check_distributed(params, device)
    return device


def check_distributed(params: Params, device: torch.device) -> None:
    """What cannot train over ranks, refused in one line: a model with batch norm on the CPU
    (its statistics over the global batch need SyncBatchNorm, which PyTorch runs on CUDA
    only; per-rank statistics would make another model than the single process trains)."""
    if device.type == "cpu" and params.model.name.startswith("resnet"):
        allowed = ", ".join(m for m in MODELS if not m.startswith("resnet"))
        raise UsageError(f"model.name: {params.model.name!r} has batch norm, which cannot "
                         "train under torchrun on the CPU (SyncBatchNorm is CUDA-only); "
                         f"allowed there: {allowed}, or device: cuda")
