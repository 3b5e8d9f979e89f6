"""Where a stage's runs execute (`tasks.Placement`): the device, the executor, the workers
and threads, the GPUs they share, and what cannot train over torchrun's ranks.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace

import torch
from torch import nn

from sparsebench.core import distributed
from sparsebench.core.models import MODELS
from sparsebench.core.train import resolve_device
from sparsebench.pipeline import ray_pool
from sparsebench.pipeline.tasks import Placement
from sparsebench.pipeline.workers import check_workers, default_workers
from sparsebench.suite.params import Params
from sparsebench.tracking.runs import tracking_uri
from sparsebench.util.errors import UsageError

#: torch asks NVML, not CUDA, whether a GPU is there: the stage's process never starts CUDA,
#: so the workers it forks can (CUDA does not survive a fork)
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def placement_of(params: Params, *, tracked: bool = False, local: bool = False) -> Placement:
    """Where this stage's runs go: the local pool (workers null: cores // threads on the
    CPU, visible GPUs x ``runs_per_gpu`` on CUDA) or the Ray cluster at
    ``execution.address`` (joined here, once; its size decides). ``tracked``: the runs log
    to MLflow live, so a multi-node cluster needs a tracking server (`ray_pool.check_tracking`).
    ``local``: this machine's pool whatever the backend (calibration's small rounds). Under
    torchrun: one run at a time in this process, over all ranks."""
    e = params.execution
    device = stage_device(params)
    if distributed.active():
        return Placement(1, e.threads, in_process=True, deterministic=e.deterministic,
                         loaders=params.data.loader_workers)
    if e.backend == "ray" and not local:
        cluster = ray_pool.connect(e.address)
        if tracked:
            ray_pool.check_tracking(tracking_uri(params.tracking.uri), cluster, e.address)
        gpus = int(cluster["resources"].get("GPU", 0)) if params.device in ("auto", "cuda") \
            else 0
        placement = Placement(1, e.threads, tuple(map(str, range(gpus))), e.runs_per_gpu,
                              e.deterministic, backend="ray", address=e.address,
                              loaders=params.data.loader_workers)
        return replace(placement, workers=ray_pool.slots(cluster, placement))
    gpus = visible_gpus(device)
    workers = e.workers or default_workers(e.threads, len(gpus), e.runs_per_gpu)
    if text := check_workers(workers, e.threads, len(gpus), e.runs_per_gpu):
        warnings.warn(text, UserWarning, stacklevel=2)
    return Placement(workers, e.threads, gpus, e.runs_per_gpu, e.deterministic,
                     loaders=params.data.loader_workers)


def visible_gpus(device: torch.device) -> tuple[str, ...]:
    """The GPUs the workers share (CUDA_VISIBLE_DEVICES entries, or indices): none off CUDA,
    the one named by ``cuda:N``, else every visible one; counted by NVML (`NVML_CHECK`)."""
    if device.type != "cuda":
        return ()
    listed = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    ids = listed or [str(i) for i in range(torch.cuda.device_count())]
    return (ids[device.index],) if device.index is not None else tuple(ids)


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
    if device.type == "cpu" and _has_batch_norm(params):
        allowed = ", ".join(m for m in MODELS if not m.startswith("resnet"))
        raise UsageError(f"model.name: {params.model.name!r} has batch norm, which cannot "
                         "train under torchrun on the CPU (SyncBatchNorm is CUDA-only); "
                         f"allowed there: a model without it ({allowed}), or device: cuda")


def _has_batch_norm(params: Params) -> bool:
    """Whether the suite's model (built on the meta device, without its weights) has a
    batch-norm layer."""
    from sparsebench.pipeline.cost import data_shape, model_spec_for

    shape, classes, _, _ = data_shape(params)  # the prepared file's, or the params'
    with torch.device("meta"):
        model = replace(model_spec_for(params, shape, classes), weights=None).build()
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
