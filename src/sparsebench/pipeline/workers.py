"""Independent runs side by side: one forked worker process per run, a few at a time.

The runs of a stage (levels x seeds) do not depend on each other. Two one-thread processes train
LeNet-300-100 1.3 times as fast in total as one two-thread process on a 2-core CPU, so a stage
forks up to ``workers`` children, each with ``threads`` torch threads (a suite setting, so a
result does not depend on the machine: a run gives the same weights, bit for bit, alone or beside
others). A child inherits the loaded data from its parent (fork, copy on write) and costs
milliseconds to start, not the seconds of a fresh interpreter importing torch.

A run that fails, or a worker that dies (killed, out of memory), fails that run alone with one
line; the others go on and keep their outputs, and the stage reports every failure at the end.
On CUDA, or with one worker and one run, the run goes in this process (no fork after CUDA).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, TypeVar

import torch

from sparsebench.core.numerics import flush_subnormals
from sparsebench.util.errors import Incomplete, UsageError

T = TypeVar("T")


@dataclass
class Failure:
    """Why a task failed, in one line; ``usage`` when the user's input caused it (a bad value,
    a diverging learning rate), so that the stage exits with code 2."""
    message: str
    usage: bool = False

    def __str__(self) -> str:
        return self.message


@dataclass
class Task:
    """A named unit of work; ``fn`` writes its own outputs (returns nothing of use). ``after``
    names an earlier task of the same `run_tasks` call whose outputs it reads: it starts once
    that one succeeded, and fails without running when that one failed."""
    name: str
    fn: Callable[[], None]
    after: str | None = None


def default_workers(threads: int, device: torch.device) -> int:
    """cores // threads on the CPU (at least one); one on CUDA."""
    if device.type != "cpu":
        return 1
    return max(1, (os.cpu_count() or 1) // threads)


def check_workers(workers: int, threads: int) -> str | None:
    """A one-line warning when ``workers * threads`` exceeds the cores here (the runs then
    share cores and each is slower; the results do not change)."""
    cores = os.cpu_count() or 1
    if workers * threads > cores:
        return (f"execution.workers: {workers} workers x {threads} threads exceed the {cores} "
                "cores here; the runs will share cores (same results, slower)")
    return None


def in_child(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` computed in a forked child and sent back. Once a process has run a torch
    op on several threads, OpenMP's thread pool is started in it, and a worker it forks hangs
    at its own first multi-threaded op (GNU OpenMP does not survive a fork): so a stage's own
    process computes on one thread (`sparsebench.pipeline.cli`) and leaves what needs more,
    such as the arithmetic digest of ``threads > 1``, to a child."""
    context = mp.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_send, args=(fn, args, send), daemon=True)
    process.start()
    send.close()
    try:
        value = receive.recv()
    finally:
        receive.close()
        process.join()
    if isinstance(value, BaseException):
        raise value
    return value


def _send(fn: Callable[..., Any], args: tuple, conn) -> None:
    try:
        conn.send(fn(*args))
    except BaseException as exc:  # the parent raises it
        conn.send(exc)
    conn.close()
    os._exit(0)


def setup_process(threads: int) -> None:
    """What every training process sets first: its thread count, flushed subnormals."""
    torch.set_num_threads(threads)
    flush_subnormals(True)


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


def _child(fn: Callable[[], None], threads: int, conn, parent: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        setup_process(threads)
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


def one_line(exc: BaseException) -> str:
    """A failure as one line; a failed write names its file (a full disk, a read-only one)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename!r}: " if exc.filename else ""
        return f"output: {where}{exc.strerror}"
    if isinstance(exc, UsageError):
        return str(exc).strip().splitlines()[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_tasks(tasks: list[Task], *, workers: int, threads: int,
              on_done: Callable[[Task], None] | None = None,
              in_process: bool = False,
              fill: Callable[[], Task | None] | None = None) -> dict[str, Failure]:
    """Run every task, at most ``workers`` at a time; return name -> its failure.

    Args:
        tasks: the runs.
        workers: processes side by side.
        threads: torch threads in each.
        on_done: called in this process after each task that succeeded (tracking, progress).
        in_process: run the tasks one after another here (CUDA), not in children.
        fill: once no task waits, gives work for an idle worker (or None): a resumable run of a
            later stage, killed as soon as the last of ``tasks`` ends, so the stage's tail, its
            last runs on fewer workers than it has, trains the next stage's runs instead of
            idling. A filler's success or failure is not this call's; its stage resumes it.
    """
    if not tasks:  # everything cached: no worker, no warm-up
        return {}
    _check_order(tasks)
    pool = _Pool(workers, threads, on_done)
    if in_process or (workers == 1 and len(tasks) <= 1):
        return pool.run_here(tasks)
    return pool.run_forked(tasks, fill)


def _check_order(tasks: list[Task]) -> None:
    """A task's dependency must be an earlier task of the same call."""
    seen: set[str] = set()
    for task in tasks:
        if task.after is not None and task.after not in seen:
            raise ValueError(f"task {task.name!r} runs after {task.after!r}, which is not an "
                             "earlier task of the same call")
        seen.add(task.name)


class _Pool:
    """The state of one `run_tasks` call: what succeeded, what failed, what runs where."""

    def __init__(self, workers: int, threads: int, on_done: Callable[[Task], None] | None):
        self.workers, self.threads, self.on_done = workers, threads, on_done
        self.failures: dict[str, Failure] = {}
        self.succeeded: set[str] = set()
        self.running: dict[int, tuple[Task, mp.Process, object]] = {}
        self.fillers: set[int] = set()  # sentinels of the running fillers
        self.context = mp.get_context("fork")

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

    def run_here(self, tasks: list[Task]) -> dict[str, Failure]:
        """One task after another in this process (CUDA, or a single task)."""
        setup_process(self.threads)
        for task in tasks:  # listed after its dependency: that one has ended
            if not self.fail_orphans([task]):
                continue
            try:
                task.fn()
            except (UsageError, FloatingPointError) as exc:
                self.failures[task.name] = Failure(one_line(exc), isinstance(exc, UsageError))
                continue
            self.succeed(task)
        return self.failures

    def run_forked(self, tasks: list[Task],
                   fill: Callable[[], Task | None] | None) -> dict[str, Failure]:
        """Each task in a forked worker, ``workers`` at a time; idle workers take ``fill``'s."""
        _warm_up()
        pending = list(tasks)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            while pending or len(self.running) > len(self.fillers):
                pending = self.start_ready(self.fail_orphans(pending))
                if len(self.running) == len(self.fillers):  # none left, or only orphans
                    break
                if fill is not None and not pending and not self.fill_idle(fill):
                    fill = None
                for sentinel in wait(list(self.running)):
                    self.reap(sentinel)
        finally:
            for _, process, _ in self.running.values():
                process.kill()
                process.join()
        return self.failures

    def start(self, task: Task) -> int:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_child,
                                       args=(task.fn, self.threads, send, os.getpid()),
                                       name=task.name, daemon=True)
        process.start()
        send.close()
        self.running[process.sentinel] = (task, process, receive)
        return process.sentinel

    def start_ready(self, pending: list[Task]) -> list[Task]:
        """Start the first tasks that wait on no other while a worker is free; the rest."""
        while len(self.running) < self.workers:
            ready = next((t for t in pending if not self.waits(t)), None)
            if ready is None:
                break
            pending = [t for t in pending if t is not ready]
            self.start(ready)
        return pending

    def fill_idle(self, fill: Callable[[], Task | None]) -> bool:
        """Give each idle worker ``fill``'s next task while a task of the call runs; False
        once ``fill`` has nothing more."""
        while self.workers > len(self.running) > len(self.fillers):
            extra = fill()
            if extra is None:
                return False
            self.fillers.add(self.start(extra))
        return True

    def reap(self, sentinel: int) -> None:
        """Collect the ended worker ``sentinel``: its success, or its failure's message."""
        task, process, receive = self.running.pop(sentinel)
        try:
            message = receive.recv() if receive.poll() else None
        except EOFError:  # the worker died before it could say anything
            message = None
        process.join()
        receive.close()
        if sentinel in self.fillers:  # done or failed: its own stage sees to it
            self.fillers.discard(sentinel)
            return
        if process.exitcode == 0:
            self.succeed(task)
            return
        if message is None:
            code = process.exitcode
            how = (f"killed by signal {-code} ({signal.Signals(-code).name})"
                   if code < 0 else f"exited with code {code}")
            message = Failure(f"its worker process {how}")
        self.failures[task.name] = message


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
