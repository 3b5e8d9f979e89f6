"""A stage's work as `Task`s, for an executor (`pipeline.executor`): the local worker pool
(`pipeline.workers`, the default) or a Ray cluster (`pipeline.ray_pool`).

A task's `Job` is made in the stage's process when the task's turn comes (its dependency,
``after``, has succeeded there): so a run that reads its previous step's model is
fingerprinted from that model, and a run found cached by then is not run at all. The job
itself only writes its ``writes`` directories, reading its ``reads`` files: where the job runs
on another machine, those travel with it and back. Fingerprints, the run cache, the outputs
and the MLflow runs are the same whichever executor ran them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from sparsebench.core.numerics import flush_subnormals
from sparsebench.data import load_splits
from sparsebench.data.stream import set_loader_workers
from sparsebench.suite.plan import DATA_FILE
from sparsebench.util.errors import Incomplete, UsageError

#: set in a worker given one GPU of its own (CUDA_VISIBLE_DEVICES names it): ``cuda`` there
#: is that GPU, as ``cuda:0``
ASSIGNED_GPU = "SPARSEBENCH_ASSIGNED_GPU"
#: what `execution.deterministic` asks cuBLAS for (PyTorch's reproducibility notes)
CUBLAS_WORKSPACE = ":4096:8"


@dataclass
class Job:
    """What a task does where it runs: ``fn`` writes each of ``writes`` (directories, whole),
    reading the prepared data and ``reads`` (files or directories, relative to the workspace).
    Picklable when it goes to Ray (it holds no open client, lock or tensor)."""
    fn: Callable[[], None]
    reads: tuple[Path, ...] = ()
    writes: tuple[Path, ...] = ()


@dataclass
class Task:
    """A named unit of work; ``fn`` writes its own outputs. ``after`` names an earlier task of
    the same call whose outputs it reads: it starts once that one succeeded, and fails without
    running when that one failed. ``start``, when given, makes the `Job` in the stage's
    process at the task's turn (None: nothing left to do) in place of ``fn``."""
    name: str
    fn: Callable[[], None] | None = None
    after: str | None = None
    start: Callable[[], Job | None] | None = None
    reads: tuple[Path, ...] = ()
    writes: tuple[Path, ...] = ()

    def job(self) -> Job | None:
        if self.start is not None:
            return self.start()
        assert self.fn is not None, f"task {self.name!r} has neither fn nor start"
        return Job(self.fn, tuple(self.reads), tuple(self.writes))


@dataclass
class Failure:
    """Why a task failed, in one line; ``usage`` when the user's input caused it (a bad value,
    a diverging learning rate), so that the stage exits with code 2."""
    message: str
    usage: bool = False

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Placement:
    """Where a stage's tasks run: ``workers`` side by side with ``threads`` torch threads
    each; ``gpus``: the visible GPUs (CUDA_VISIBLE_DEVICES entries) the workers share,
    ``runs_per_gpu`` on each; ``in_process``: one after another in the stage's process
    (torchrun); ``backend`` ``local`` (forked pool) or ``ray`` (at ``address``); ``loaders``:
    each run's `DataLoader` processes (``data.loader_workers``: streamed image folders)."""
    workers: int
    threads: int
    gpus: tuple[str, ...] = ()
    runs_per_gpu: int = 1
    deterministic: bool = False
    in_process: bool = False
    backend: str = "local"
    address: str = "auto"
    loaders: int = 2

    def gpu_of(self, slot: int) -> str | None:
        """The GPU of worker slot ``slot``: ``runs_per_gpu`` consecutive slots share one, and
        slots beyond ``len(gpus) * runs_per_gpu`` wrap around (warned by `check_workers`)."""
        if not self.gpus:
            return None
        return self.gpus[(slot // self.runs_per_gpu) % len(self.gpus)]


class Ledger:
    """What an executor knows of one call's tasks: which succeeded (``on_done`` called here for
    each), which failed and why, and whether a task may start."""

    def __init__(self, on_done: Callable[[Task], None] | None):
        self.on_done = on_done
        self.failures: dict[str, Failure] = {}
        self.succeeded: set[str] = set()

    def waits(self, task: Task) -> bool:
        """True while ``task``'s dependency has not succeeded."""
        return task.after is not None and task.after not in self.succeeded

    def fail_orphans(self, waiting: list[Task]) -> list[Task]:
        """``waiting`` without the tasks whose dependency failed, each failed in turn; in list
        order (a task after its dependency), so a whole chain goes in one call."""
        kept = []
        for task in waiting:
            if task.after is not None and task.after in self.failures:
                self.failures[task.name] = Failure(f"{task.name}: not run, {task.after} failed")
            else:
                kept.append(task)
        return kept

    def succeed(self, task: Task) -> None:
        self.succeeded.add(task.name)
        if self.on_done is not None:
            self.on_done(task)

    def fail(self, task: Task, exc: BaseException) -> None:
        self.failures[task.name] = Failure(one_line(exc), isinstance(exc, UsageError))

    def job(self, task: Task) -> Job | None:
        """``task``'s job, made here at its turn (None: nothing to run, it succeeded); a
        failure to make it fails the task."""
        try:
            job = task.job()
        except (UsageError, FloatingPointError, OSError, ValueError) as exc:
            self.fail(task, exc)
            return None
        if job is None:
            self.succeed(task)
        return job


def splits(*names: str) -> dict:
    """The prepared splits ``names``, loaded once per process: the local pool's workers
    inherit the stage's; a Ray worker loads its node's copy once, and again when it changes."""
    stat = DATA_FILE.stat()
    return _splits(str(DATA_FILE.resolve()), (stat.st_mtime_ns, stat.st_size), names)


@lru_cache(maxsize=2)
def _splits(path: str, stamp: tuple[int, int], names: tuple[str, ...]) -> dict:
    return load_splits(Path(path), names)


def use_gpu(gpu: str | None) -> None:
    """In a worker, before CUDA starts: see only ``gpu`` (None: change nothing)."""
    if gpu is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ[ASSIGNED_GPU] = gpu


def deterministic_algorithms(on: bool) -> None:
    """``execution.deterministic``: PyTorch's deterministic algorithms (an op without one
    raises), cuBLAS's fixed workspace and no cuDNN autotuning, so a run's weights do not
    depend on the GPU that ran it or on what ran beside it."""
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def setup_process(threads: int, gpu: str | None = None, deterministic: bool = False,
                  loaders: int | None = None) -> None:
    """What every training process sets first, before CUDA starts in it: its GPU, its thread
    count, flushed subnormals, deterministic algorithms when asked, its runs' `DataLoader`
    processes (None: as inherited)."""
    use_gpu(gpu)
    if loaders is not None:
        set_loader_workers(loaders)
    torch.set_num_threads(threads)
    flush_subnormals(True)
    deterministic_algorithms(deterministic)


def here(device: torch.device) -> torch.device:
    """The device a job trains on in this process: a worker that was given one GPU of its own
    sees it as ``cuda:0``; otherwise ``device`` unchanged."""
    if device.type == "cuda" and os.environ.get(ASSIGNED_GPU):
        return torch.device("cuda", 0)
    return device


def check_order(tasks: list[Task]) -> None:
    """A task's dependency must be an earlier task of the same call."""
    seen: set[str] = set()
    for task in tasks:
        if task.after is not None and task.after not in seen:
            raise ValueError(f"task {task.name!r} runs after {task.after!r}, which is not an "
                             "earlier task of the same call")
        seen.add(task.name)


def one_line(exc: BaseException) -> str:
    """A failure as one line; a failed write names its file (a full disk, a read-only one)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename!r}: " if exc.filename else ""
        return f"output: {where}{exc.strerror}"
    if isinstance(exc, UsageError):
        return str(exc).strip().splitlines()[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def raise_failures(what: str, failures: dict[str, Failure], total: int) -> None:
    """The stage's one line for its failed tasks: a `UsageError` (exit 2) when the user's input
    caused every one, else `Incomplete` (exit 1); the finished tasks' outputs are kept."""
    if not failures:
        return
    listed = "; ".join(str(f) if str(f).startswith(name) else f"{name}: {f}"
                       for name, f in failures.items())
    if all(f.usage for f in failures.values()):
        raise UsageError(listed if len(failures) == 1 else f"{what}: {listed}")
    raise Incomplete(f"{what}: {len(failures)} of {total} runs failed ({listed}); the others "
                     "are kept: run the stage again")
