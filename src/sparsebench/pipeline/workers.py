"""Independent runs side by side: one forked worker process per run, a few at a time.

The runs of a stage (levels x seeds) do not depend on each other. Two one-thread processes train
LeNet-300-100 1.3 times as fast in total as one two-thread process on a 2-core CPU, so a stage
forks up to ``workers`` children, each with ``threads`` torch threads (a suite setting, so a
result does not depend on the machine: a run gives the same weights, bit for bit, alone or beside
others). A child inherits the loaded data from its parent (fork, copy on write) and costs
milliseconds to start, not the seconds of a fresh interpreter importing torch.

On CUDA each worker slot is given one GPU (``runs_per_gpu`` slots share one) before CUDA starts
in it: the stage's process never starts CUDA (`devices.visible_gpus` asks NVML), so forking
stays safe, and each run sees only its GPU. A run that fails, or a worker that dies (killed,
out of memory), fails that run alone with one line; the others go on and keep their outputs,
and the stage reports every failure at the end. Under torchrun the runs go one after another
in the stage's own process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import wait

from sparsebench.pipeline.tasks import (
    Failure,
    Job,
    Ledger,
    Placement,
    Task,
    one_line,
    setup_process,
)
from sparsebench.util.errors import UsageError


def default_workers(threads: int, gpus: int = 0, runs_per_gpu: int = 1) -> int:
    """cores // threads on the CPU (at least one); ``gpus x runs_per_gpu`` on CUDA."""
    if gpus:
        return gpus * runs_per_gpu
    return max(1, (os.cpu_count() or 1) // threads)


def check_workers(workers: int, threads: int, gpus: int = 0, runs_per_gpu: int = 1
                  ) -> str | None:
    """A one-line warning when the workers exceed what is here: ``workers * threads`` the
    cores (the runs then share cores and each is slower; the results do not change), or on
    CUDA ``gpus x runs_per_gpu`` (more runs share a GPU than asked)."""
    if gpus and workers > gpus * runs_per_gpu:
        return (f"execution.workers: {workers} workers exceed the {gpus} GPUs x runs_per_gpu "
                f"{runs_per_gpu} here; {-(-workers // gpus)} runs will share a GPU")
    cores = os.cpu_count() or 1
    if not gpus and workers * threads > cores:
        return (f"execution.workers: {workers} workers x {threads} threads exceed the {cores} "
                "cores here; the runs will share cores (same results, slower)")
    return None


def _warm_up() -> None:
    """Import here, once, what every run would otherwise import in its own worker: the first
    torch optimizer loads torch._dynamo (3 to 8 s), and a forked worker inherits it loaded."""
    import torch._dynamo  # noqa: F401


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when its parent (the stage) dies, even by SIGKILL,
    so no orphan goes on writing outputs after a killed stage."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child(fn: Callable[[], None], setup: tuple, conn, parent: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        setup_process(*setup)
        fn()
        conn.send(None)
    except BaseException as exc:  # the parent reports it as the run's one line
        if not isinstance(exc, (UsageError, FloatingPointError, OSError)):
            traceback.print_exc()
        conn.send(Failure(one_line(exc), isinstance(exc, UsageError)))
        conn.close()
        os._exit(3)
    conn.close()
    os._exit(0)


def run_local(tasks: list[Task], placement: Placement,
              on_done: Callable[[Task], None] | None = None) -> dict[str, Failure]:
    """Run every task, at most ``placement.workers`` at a time, each in a forked worker (one
    after another in this process under torchrun, or for a single task on one worker of one
    thread on the CPU); ``on_done`` is called here after each task that succeeded. Returns
    name -> failure.

    A task on several threads is never run here: its first parallel operation would start GNU
    OpenMP's thread pool in this process, and every worker forked from it afterwards (the
    next stage called in the same process, a second sweep) would hang at its own first
    parallel operation."""
    pool = _Pool(placement, on_done)
    if placement.in_process or (placement.workers == 1 and len(tasks) <= 1
                                and not placement.gpus and placement.threads == 1):
        return pool.run_here(tasks)
    return pool.run_forked(tasks)


class _Pool(Ledger):
    """One `run_local` call: its `Ledger`, and what runs in which worker slot."""

    def __init__(self, placement: Placement, on_done: Callable[[Task], None] | None):
        super().__init__(on_done)
        self.placement, self.workers = placement, placement.workers
        self.running: dict[int, tuple[Task, mp.Process, object, int]] = {}
        self.free = list(range(placement.workers))  # worker slots: slot i has `gpu_of(i)`
        self.context = mp.get_context("fork")

    def run_here(self, tasks: list[Task]) -> dict[str, Failure]:
        """One task after another in this process (torchrun, or a single task)."""
        setup_process(self.placement.threads, None, self.placement.deterministic,
                      self.placement.loaders)
        for task in tasks:  # listed after its dependency: that one has ended
            if not self.fail_orphans([task]) or (job := self.job(task)) is None:
                continue
            try:
                job.fn()
            except (UsageError, FloatingPointError) as exc:
                self.fail(task, exc)
                continue
            self.succeed(task)
        return self.failures

    def run_forked(self, tasks: list[Task]) -> dict[str, Failure]:
        """Each task in a forked worker, ``workers`` at a time."""
        _warm_up()
        pending = list(tasks)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            while pending or self.running:
                pending = self.start_ready(self.fail_orphans(pending))
                if not self.running:  # none left, or only orphans
                    break
                for sentinel in wait(list(self.running)):
                    self.reap(sentinel)
        finally:
            for _, process, _, _ in self.running.values():
                process.kill()
                process.join()
        return self.failures

    def start(self, task: Task, job: Job) -> int:
        p, slot = self.placement, self.free.pop(0)
        receive, send = self.context.Pipe(duplex=False)
        setup = (p.threads, p.gpu_of(slot), p.deterministic, p.loaders)
        process = self.context.Process(target=_child,
                                       args=(job.fn, setup, send, os.getpid()),
                                       name=task.name, daemon=False)
        process.start()
        send.close()
        self.running[process.sentinel] = (task, process, receive, slot)
        return process.sentinel

    def start_ready(self, pending: list[Task]) -> list[Task]:
        """Start the first tasks that wait on no other while a worker is free; the rest. A
        task found done at its turn (no job) frees its dependants at once."""
        while len(self.running) < self.workers:
            ready = next((t for t in pending if not self.waits(t)), None)
            if ready is None:
                break
            pending = self.fail_orphans([t for t in pending if t is not ready])
            if (job := self.job(ready)) is not None:
                self.start(ready, job)
        return pending

    def reap(self, sentinel: int) -> None:
        """Collect the ended worker ``sentinel``: its success, or its failure's message."""
        task, process, receive, slot = self.running.pop(sentinel)
        self.free.append(slot)
        self.free.sort()
        try:
            message = receive.recv() if receive.poll() else None
        except EOFError:  # the worker died before it could say anything
            message = None
        process.join()
        receive.close()
        if process.exitcode == 0:
            self.succeed(task)
            return
        if message is None:
            code = process.exitcode
            how = (f"killed by signal {-code} ({signal.Signals(-code).name})"
                   if code < 0 else f"exited with code {code}")
            message = Failure(f"its worker process {how}")
        self.failures[task.name] = message
