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

import ast
import hashlib
import io
import json
import random
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench import distributed
from sparsebench.paths import atomic_dir, atomic_write, swap_in
from sparsebench.sparsity import apply_masks, get_masks

FINGERPRINT = "FINGERPRINT"
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


def fingerprint(*, stage: str, config: Any, inputs: Iterable[Path] = ()) -> str:
    """SHA-256 over the stage, its validated config (JSON), its input files and the code."""
    digest = hashlib.sha256()
    digest.update(stage.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for path in sorted(Path(p) for p in inputs):
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                digest.update(str(file).encode())
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    digest.update(code_digest().encode())
    return digest.hexdigest()


_CODE_DIGEST: str | None = None

#: modules that orchestrate, track or report runs but cannot change a run's numbers or files:
#: left out of `code_digest`, so editing them keeps the finished runs (DVC still reruns the
#: stages that list them, and those find every run cached). Everything else counts.
NOT_RESULT_CODE = ("cli.py", "stages.py", "workers.py", "tracking.py", "curves.py",
                   "curves_report.py", "calibrate.py", "profile.py", "__main__.py", "tuning/",
                   "mlflow_model.py", "mlflow_pyfunc.py")


def code_digest() -> str:
    """SHA-256 of the package's Python sources that can change a run's result (all but
    `NOT_RESULT_CODE`): a resume or a cached run never mixes two versions of them. Each file
    counts as its syntax tree without docstrings (`code_of`), so an edit of a docstring, a
    comment or the layout keeps every cached run."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        digest = hashlib.sha256()
        root = Path(__file__).parent
        for file in sorted(root.rglob("*.py")):
            name = file.relative_to(root).as_posix()
            if name.startswith(NOT_RESULT_CODE):  # a file's name, or under a folder
                continue
            digest.update(name.encode())
            digest.update(code_of(file.read_bytes()))
        _CODE_DIGEST = digest.hexdigest()
    return _CODE_DIGEST


def code_of(source: bytes) -> bytes:
    """What of a Python source can change what it computes: ``ast.dump`` of its tree (no
    comments, no positions, no layout) with the docstring of every module, class and function
    left out."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


class StageWork:
    """A stage's resumable work directory beside its target; see the module docstring.

    Use as a context manager: on success the work directory replaces ``target``; on an error
    it stays (with what was finished) for the next start, and ``target`` is untouched.
    """

    def __init__(self, target: Path, fingerprint: str):
        self.target = Path(target)
        self.dir = self.target.with_name(f".{self.target.name}.work")
        self.fingerprint = fingerprint

    def __enter__(self) -> StageWork:
        distributed.rank0_first(self._prepare)  # under torchrun: rank 0 writes, all read
        return self

    def _prepare(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        marker = self.dir / FINGERPRINT
        if self.dir.exists() and not (marker.exists() and marker.read_text() == self.fingerprint):
            shutil.rmtree(self.dir)  # another config, code or input: start over
        if not self.dir.exists():
            with atomic_dir(self.dir) as tmp:
                (tmp / FINGERPRINT).write_text(self.fingerprint)
        for stale in self.dir.glob(".*.tmp*"):  # a seed being moved in when the kill came
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()

    def __exit__(self, kind, value, tb) -> None:
        if not distributed.writer():
            if kind is None:
                distributed.rank0_first(lambda: None)  # wait for rank 0's swap
            return
        if kind is not None:  # the target is untouched; keep what can be resumed, if anything
            resumable = [p for p in self.dir.iterdir() if p.name != FINGERPRINT]
            if not resumable:
                shutil.rmtree(self.dir, ignore_errors=True)
            return
        distributed.rank0_first(self._swap)

    def _swap(self) -> None:
        (self.dir / FINGERPRINT).unlink()
        for leftover in self.dir.glob(f"*{RESUME_SUFFIX}"):
            leftover.unlink()
        swap_in(self.dir, self.target)

    def done(self, name: str) -> bool:
        """Whether the part ``name`` (a seed directory) was finished by an earlier start."""
        return (self.dir / name).is_dir()

    def checkpoint(self, name: str) -> EpochCheckpoint:
        return EpochCheckpoint(self.dir / f"{name}{RESUME_SUFFIX}")

    def finish(self, name: str, write: Callable[..., None], *args: Any) -> Path:
        """Run ``write(path, *args)`` into a fresh empty directory, then move it in whole as
        ``name`` (`paths.atomic_dir`)."""
        with atomic_dir(self.dir / name) as tmp:
            write(tmp, *args)
        (self.dir / f"{name}{RESUME_SUFFIX}").unlink(missing_ok=True)
        return self.dir / name
