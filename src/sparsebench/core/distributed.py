"""Data-parallel training under ``torchrun``: one model over all ranks, with
`torch.nn.parallel.DistributedDataParallel` (PyTorch's own gradient all-reduce).

Without torchrun's environment (no ``WORLD_SIZE`` above 1) `active` is False and every helper
here is the identity: the single-process path is the code of before, bit for bit.

Under torchrun (``torchrun --standalone --nproc_per_node N -m sparsebench pretrain``):

* `setup` joins the process group named by the environment: gloo on the CPU, nccl on CUDA
  (one GPU per rank, ``cuda:LOCAL_RANK``), with a timeout so a rank that dies stops the
  others with one line instead of a hang.
* Every rank holds the whole training split and the same seeded generator, so every rank
  draws the same global batch (a shuffled epoch, or SAS-ADMM's draws with replacement);
  `shard` gives each rank its contiguous share of it (sizes differ by at most one). The
  global batch is the single-process batch.
* DDP averages the gradients over the ranks. A rank's loss is the sum of its share's losses
  times ``world / global_batch`` (`local_loss`), so the average is the mean over the global
  batch whatever the shares' sizes (the unequal last batch included): the gradient of the
  single-process step, up to the order of the floating-point reduction.
* Everything else (masks, ADMM's Z and U, SAS-ADMM's iterates, optimizer state) is computed
  by every rank from identical gradients; nothing of it is broadcast (``broadcast_buffers``
  is off), so a rank that drifted would show in `gather_equal` rather than be papered over.
* Rank 0 alone writes files (`writer`); the others wait for it (`rank0_first`).

See Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
VLDB 2020, for DDP's bucketed all-reduce overlapped with the backward pass.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sparsebench.util.errors import UsageError

T = TypeVar("T")

#: seconds a collective waits for a missing rank before the others stop (SPARSEBENCH_DDP_TIMEOUT)
DEFAULT_TIMEOUT = 600.0


def launched() -> bool:
    """Whether torchrun (or any launcher of the env:// protocol) started this process with
    more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether this process trains one model with others (a process group of size > 1)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def writer() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this rank's device.

    Without torchrun's environment: nothing, and ``device`` as it is. gloo on the CPU; nccl
    on CUDA, each rank on ``cuda:LOCAL_RANK``. Refused (one line): a device other than cpu or
    cuda, a GPU count below the ranks on this node.
    """
    if not launched():
        return device
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device: {str(device)!r} cannot train under torchrun; allowed: cpu "
                         "(gloo) or cuda (nccl)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UsageError(f"nproc_per_node: local rank {local} has no GPU (this node has "
                             f"{torch.cuda.device_count()}); allowed: at most one process per GPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        seconds = float(os.environ.get("SPARSEBENCH_DDP_TIMEOUT", DEFAULT_TIMEOUT))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=seconds))
        _PEERS[:] = [None] * dist.get_world_size()
        dist.all_gather_object(_PEERS, (socket.gethostname(), os.getpid()))
    return device


_PEERS: list[tuple[str, int] | None] = []  # (host, pid) of every rank, gathered by setup


def lost_ranks(wait: float = 3.0) -> list[int]:
    """The ranks on this host whose process is gone, polled for up to ``wait`` seconds (a
    broken connection can be seen before the process has finished exiting); a rank on
    another host cannot be probed from here."""
    host, deadline = socket.gethostname(), time.monotonic() + wait
    peers = [(r, p[1]) for r, p in enumerate(_PEERS)
             if p is not None and p[0] == host and r != rank()]
    while True:
        gone = [r for r, pid in peers if not _alive(pid)]
        if gone or time.monotonic() > deadline:
            return gone
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def failure_line(exc: BaseException) -> str:
    """One line for a collective that failed because another rank stopped: which rank
    stopped (when it ran on this host) and this rank's own."""
    gone = lost_ranks()
    who = (f"rank {', '.join(map(str, gone))} stopped" if gone
           else "another rank stopped or timed out")
    text = str(exc).strip().splitlines()
    return (f"torchrun: {who}; rank {rank()} stops too ({type(exc).__name__}: "
            f"{text[0][:120] if text else ''}); nothing half-written: run the stage again "
            "to resume")


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shares(batch: int, ranks: int) -> list[int]:
    """How many samples of a ``batch`` each of ``ranks`` ranks takes (the first take one more
    when it does not divide)."""
    return [batch // ranks + (r < batch % ranks) for r in range(ranks)]


def check_shards(n: int, batch_size: int, what: str) -> None:
    """Refuse a world larger than the smallest batch of an epoch (a rank would get no sample).

    ``n`` samples in batches of ``batch_size``: the smallest batch is the last, n mod batch
    (or a whole batch when it divides, or n when n < batch_size).
    """
    ranks = world()
    if ranks == 1:
        return
    smallest = min(batch_size, n) if n % batch_size == 0 or n < batch_size else n % batch_size
    if smallest < ranks:
        raise UsageError(
            f"nproc_per_node: {ranks} processes exceed the data shards of {what}: its "
            f"smallest batch has {smallest} samples ({n} samples in batches of {batch_size}); "
            f"allowed: at most {smallest} processes, or a batch size that leaves every rank a "
            "sample")


def shard(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous share of a global batch (the whole batch in one process)."""
    if not active():
        return xb, yb
    sizes = shares(len(yb), world())
    start = sum(sizes[: rank()])
    return xb[start : start + sizes[rank()]], yb[start : start + sizes[rank()]]


def local_loss(logits: torch.Tensor, yb: torch.Tensor, global_batch: int) -> torch.Tensor:
    """The loss whose DDP average over the ranks is the mean cross-entropy of the global
    batch: this share's summed loss times world / global_batch."""
    return F.cross_entropy(logits, yb, reduction="sum") * (world() / global_batch)


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed, else ``model`` itself.

    Parameters are broadcast from rank 0 at construction (DDP's own check that the ranks
    start equal); buffers (masks, batch-norm statistics) are not broadcast afterwards. On
    CUDA, batch norm becomes SyncBatchNorm in place (the same parameters and buffers), so its
    statistics are those of the global batch (on the CPU, where SyncBatchNorm does not run,
    the stages refuse batch-norm models under torchrun).
    """
    if not active():
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    if device.type == "cuda":  # batch statistics over the global batch, as one process
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    with warnings.catch_warnings():  # 2.14 deprecates the name; its successor still syncs
        warnings.simplefilter("ignore", FutureWarning)  # buffers at init, which is fine too
        return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                   broadcast_buffers=False)


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the ranks (itself in one process)."""
    if active():
        value = value.clone()
        dist.all_reduce(value)
    return value


def barrier() -> None:
    if active():
        dist.barrier()


def rank0_first(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 alone (a write); every rank returns once it is done. Rank 0's
    failure is every rank's: the others raise one line naming it, rank 0 re-raises."""
    if not active():
        return fn()
    failed, result = None, None
    if writer():
        try:
            result = fn()
        except BaseException as exc:
            failed = exc
    flag = torch.tensor([0 if failed is None else 1])
    dist.broadcast(flag, 0)
    if failed is not None:
        raise failed
    if flag.item():
        raise RuntimeError("rank 0 failed writing its outputs; this rank stops")
    return result


def gather_equal(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """The largest absolute difference of each tensor between this rank and rank 0 (0.0
    everywhere when the ranks agree bit for bit), gathered on every rank."""
    out = {}
    for name, t in tensors.items():
        t = t.detach().float().contiguous()
        first = t.clone()
        if active():
            dist.broadcast(first, 0)
        diff = (t - first).abs().max() if t.numel() else torch.zeros(())
        out[name] = all_max(diff).item()
    return out


def all_max(value: torch.Tensor) -> torch.Tensor:
    if active():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def describe() -> dict[str, Any]:
    """What a result records of the run's parallelism."""
    return {"world_size": world(), "backend": dist.get_backend() if active() else None}


def share(batch: int) -> tuple[int, int]:
    """This rank's (start, length) in a global batch of ``batch`` samples (`shard`'s rule)."""
    sizes = shares(batch, world())
    return sum(sizes[: rank()]), sizes[rank()]
