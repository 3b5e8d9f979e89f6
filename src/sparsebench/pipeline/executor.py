"""The executor boundary: a stage's `Task`s go to the local worker pool (`pipeline.workers`,
the embedded default: forked in milliseconds) or to a Ray cluster (`pipeline.ray_pool`), as
``execution.backend`` says; both give the same files, fingerprints and MLflow runs.
"""

from __future__ import annotations

from collections.abc import Callable

from sparsebench.pipeline import ray_pool, workers
from sparsebench.pipeline.tasks import Failure, Placement, Task, check_order


def run_tasks(tasks: list[Task], placement: Placement,
              on_done: Callable[[Task], None] | None = None) -> dict[str, Failure]:
    """Run every task where ``placement`` says; return name -> its failure."""
    if not tasks:
        return {}
    check_order(tasks)
    if placement.backend == "ray" and not placement.in_process:
        return ray_pool.run_on_ray(tasks, placement, on_done)
    return workers.run_local(tasks, placement, on_done)
