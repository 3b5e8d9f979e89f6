"""Per-epoch hooks of a training stage: a line on stdout, the live MLflow run."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from sparsebench.core import distributed


def log_epoch(name: str):
    """One line per epoch (or ADMM iteration) on stdout: the figures the row has."""
    def show(phase: str, row: dict) -> None:
        if not distributed.writer():  # under torchrun: rank 0's lines alone
            return
        figures = " ".join(f"{k} {v:.4g}" for k, v in row.items()
                           if k not in ("epoch", "seconds") and isinstance(v, float))
        print(f"{phase} {name} epoch {row['epoch']}: {figures} "
              f"({row.get('seconds', 0):.2f}s)", flush=True)
    return show


def chain_hooks(*hooks):
    """One ``on_epoch(phase, row)`` calling each hook that is not None."""
    present = [h for h in hooks if h is not None]

    def call(phase: str, row: dict) -> None:
        for hook in present:
            hook(phase, row)
    return call


@contextmanager
def live_epochs(live, work: Path):
    """Start ``live`` (a `tracking.LiveRun` or None) and yield its epoch hook; a run that
    fails ends its MLflow run FAILED (a killed one stays RUNNING, and its rerun continues it)."""
    if live is None:
        yield None
        return
    work.mkdir(parents=True, exist_ok=True)  # where the live run keeps its id for a resume
    live.start()
    try:
        yield live.epoch
    except BaseException:
        live.finish(None, status="FAILED")
        raise
