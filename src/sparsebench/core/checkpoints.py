"""Resume a killed stage where it stopped, with the numbers of a run never interrupted.

Two parts:

* `StageWork`: a training stage builds its outputs in a work directory beside the target
  (``runs/<key>/.prune.work/``), tagged with a fingerprint of everything the outputs depend on
  (the validated params, the input files, the package's code). Each finished seed is moved into
  it whole. A stage that is killed leaves the work directory behind; started again with the
  same fingerprint it keeps the finished seeds and resumes the unfinished one, with another
  fingerprint it starts over. On success the work directory replaces the target in one rename
  (`paths.swap_in`), so the previous outputs stay as they were until then.
* `EpochCheckpoint`: one file per (stage, seed), rewritten atomically at the end of every epoch
  by `train.fit` (and every iteration by SAS-ADMM): the model with its masks, the optimizer and
  LR-schedule state, the RNG states (the shuffling generator, torch's global CPU and CUDA
  generators, Python's), the epoch, the curves so far, and the method's own state (ADMM's Z, U
  and rho; SAS-ADMM's W, Wb, Z, U and sums). Training resumed from it is bit for bit the
  training that was never stopped (on the CPU, same seed): tested by killing stages with
  SIGKILL at a random epoch.

The file is written by `torch.save` and read with ``weights_only=True``: tensors, numbers,
strings and containers only, nothing executable.
"""

from __future__ import annotations

import io
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench.core import distributed
from sparsebench.core.sparsity import apply_masks, get_masks
from sparsebench.util.paths import atomic_write

RESUME_SUFFIX = ".resume.pt"


class EpochCheckpoint:
    """The resume file of one training run (a stage and a seed).

    `fit` calls `take` once at its start: the saved state is returned only to the fit call
    whose ``tag`` saved it (a method that trains in several calls, like ADMM's W-steps, tags each
    one), and only once. `peek` lets the method see its own saved state before that.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._state: dict | None = None
        self._taken = False
        if self.path.exists():
            try:
                self._state = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as exc:  # unreadable: train from the start rather than fail
                print(f"resume: {str(self.path)!r} cannot be read ({type(exc).__name__}); "
                      "starting this run from its first epoch", file=sys.stderr)

    def peek(self) -> dict | None:
        """The saved state, if any and not yet restored."""
        return None if self._taken else self._state

    def take(self, tag: str) -> dict | None:
        """The saved state if it was saved by the fit call ``tag``; None otherwise."""
        state = self.peek()
        if state is None or state.get("tag") != tag:
            return None
        self._taken = True
        return state

    def save(self, state: dict) -> None:
        """Write ``state`` beside the file, then rename it over the file.

        Not flushed to disk (`atomic_write` with ``durable=False``): a killed stage finds the
        file whole, and after a power cut an empty or unreadable one only restarts the run
        from its first epoch (`__init__`); the flush took 20 to 50 ms an epoch here, 3% of a
        LeNet-300-100 epoch."""
        self._taken = True  # what is on disk now is newer than anything loaded before
        if not distributed.writer():  # under torchrun rank 0 alone writes (same state)
            return
        buffer = io.BytesIO()
        torch.save(state, buffer)  # in memory: a full disk then fails as a plain OSError
        atomic_write(self.path, buffer.getvalue(), durable=False)


@dataclass
class Resume:
    """What `train.fit` needs to checkpoint every epoch and to restore itself.

    Args:
        checkpoint: the run's resume file.
        tag: which fit call of the run this is (unique within the run).
        extra: the method's own state at the end of an epoch, saved with it (ADMM's Z and U).
    """
    checkpoint: EpochCheckpoint
    tag: str = "fit"
    extra: Callable[[], dict] | None = None


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def model_state(model: nn.Module) -> dict[str, Any]:
    """The weights in the form they are trained in, and the masks (the prune form). Not
    copies: `EpochCheckpoint.save` serializes the state at once."""
    return {"masks": get_masks(model),
            "weights": {k: v.detach() for k, v in model.state_dict().items()}}


def set_model_state(model: nn.Module, state: dict[str, Any]) -> None:
    if state["masks"]:
        apply_masks(model, state["masks"])  # the same prune form the weights were saved in
    model.load_state_dict(state["weights"])


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer | None,
                   scheduler: Any, generator: torch.Generator | None, **fields: Any) -> dict:
    """Everything `restore_training` needs, with ``fields`` (tag, epoch, curves, extra)."""
    return {"model": model_state(model),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(generator), **fields}


def restore_training(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                     scheduler: Any, generator: torch.Generator | None) -> None:
    set_model_state(model, state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], generator)
