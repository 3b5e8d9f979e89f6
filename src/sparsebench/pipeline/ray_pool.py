"""A stage's tasks on a Ray cluster (``execution.backend: ray``): each job a Ray task that asks
for its resources (``threads`` CPUs, and on CUDA 1 / ``runs_per_gpu`` of a GPU, whose
CUDA_VISIBLE_DEVICES Ray sets), on whichever node has them.

No shared filesystem is needed. A job's inputs (the prepared data, a pretrained model, a shared
prune trajectory) go into Ray's object store once per file; a node fetches each file once into
its workspace (``<tmp>/sparsebench-ray/<id>``, checked by SHA-256) and runs the job there; the
directories the job writes come back to this process, which swaps each into place whole.
A node that dies: Ray runs its tasks again elsewhere (``max_retries``), and a run's MLflow run
is found again by its fingerprint tag (`tracking.LiveRun`), so each run is logged once.
Ray's start-up is paid once per process: `connect` keeps the connection.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparsebench.pipeline.tasks import (
    ASSIGNED_GPU,
    Failure,
    Job,
    Ledger,
    Placement,
    Task,
    one_line,
    setup_process,
)
from sparsebench.suite.plan import DATA_FILE
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import atomic_dir, repo_root

#: how often Ray runs a task again after its worker or node died
RETRIES = 3
#: the error line's advice when no cluster answers
START = ("start one (`ray start --head`, then `ray start --address=<head>:6379` on each other "
         "node) or set execution.address: local")


def connect(address: str) -> dict[str, Any]:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine belongs to;
    ``local``: start one in this process; ``host:port`` or ``ray://host:port``) once per
    process; its alive nodes and resources. No cluster there: one line (`UsageError`)."""
    import ray  # lazy: an optional engine, about 2 s to import

    if not ray.is_initialized():
        _reachable(address)
        kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
        try:
            if address == "local":  # a new cluster, whatever ray_current_cluster says
                # its workers at this process's priority, as the local pool's (Ray: nice 15)
                os.environ.setdefault("RAY_worker_niceness", "0")
                ray.init(address="local", num_cpus=os.cpu_count() or 1,
                         include_dashboard=False, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if "ray[client]" in first:
                raise UsageError(f"execution.address: {address!r} is a Ray Client address, "
                                 "which needs Ray Client here: pip install 'ray[client]' (or "
                                 "use the head's host:port from a node of the cluster)"
                                 ) from None
            raise UsageError(f"execution.address: {address!r}: no Ray cluster answers there "
                             f"({first[:160]}); {START}") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"nodes": len(nodes), "resources": ray.cluster_resources()}


def _reachable(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) that takes no TCP connection is refused at
    once, not after Ray's own minute of retries."""
    if address in ("auto", "local"):
        return
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"execution.address: {address!r} is not an address; allowed: auto, "
                         "local, host:port, ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise UsageError(f"execution.address: {address!r}: no Ray cluster answers there "
                         f"({exc.strerror or exc}); {START}") from None


def check_tracking(uri: str, cluster: dict[str, Any], address: str) -> None:
    """Runs on other nodes log to ``uri`` live: refused in one line, before any training,
    unless every node can reach it (a tracking server; a local file or SQLite path is this
    machine's alone)."""
    if uri.startswith(("http:", "https:", "databricks")):
        return
    if cluster["nodes"] <= 1 and not address.startswith("ray://"):
        return
    raise UsageError(
        f"tracking.uri: {uri!r} is a file on this machine, which the other nodes of the Ray "
        f"cluster ({cluster['nodes']} nodes) cannot reach; run a tracking server "
        "(`mlflow server --backend-store-uri sqlite:///mlruns/mlflow.db --host 0.0.0.0 "
        "--port 5000`) and set tracking.uri: http://<this host>:5000, or set "
        "tracking.enabled: false")


def slots(cluster: dict[str, Any], placement: Placement) -> int:
    """How many runs the cluster holds at once: its GPUs x ``runs_per_gpu`` on CUDA, else
    its CPUs // ``threads``."""
    resources = cluster["resources"]
    if placement.gpus:
        return max(1, int(resources.get("GPU", 0) * placement.runs_per_gpu))
    return max(1, int(resources.get("CPU", 1) // placement.threads))


_WARM: set[tuple[int, float]] = set()


def _options(placement: Placement) -> dict[str, Any]:
    """What each run's Ray task asks for: its threads' CPUs, and a GPU's share on CUDA."""
    return {"num_cpus": placement.threads,
            "num_gpus": (1 / placement.runs_per_gpu) if placement.gpus else 0}


def warm_up(placement: Placement) -> None:
    """Start the cluster's workers for runs of this shape and import in each what every run
    needs (torch, the library, TorchDynamo: seconds a worker), once per process: a start-up
    cost, as the local pool's imports happen before it forks."""
    import ray  # lazy: an optional engine

    options = _options(placement)
    shape = (options["num_cpus"], options["num_gpus"])
    if shape in _WARM:
        return
    connect(placement.address)
    warm = ray.remote(max_retries=RETRIES)(_warm).options(**options)
    ray.get([warm.remote() for _ in range(placement.workers)])
    _WARM.add(shape)


def _warm() -> None:
    import time

    import torch._dynamo  # noqa: F401  the first optimizer's import, seconds

    import sparsebench.run  # noqa: F401

    time.sleep(0.5)  # held a moment, so that each lands on a worker of its own


def run_on_ray(tasks: list[Task], placement: Placement,
               on_done: Callable[[Task], None] | None = None) -> dict[str, Failure]:
    """Run every task as a Ray task; ``on_done`` is called here after each task that succeeded
    (its files in place). Returns name -> its failure."""
    import ray  # lazy: an optional engine

    warm_up(placement)
    remote = ray.remote(max_retries=RETRIES, retry_exceptions=False)(_run_job).options(
        **_options(placement))
    shipped = _Shipped()
    workspace = hashlib.sha256(f"{socket.gethostname()}:{repo_root()}".encode()).hexdigest()[:16]
    ledger = Ledger(on_done)
    running: dict[Any, Task] = {}
    pending = list(tasks)
    while pending or running:
        pending = ledger.fail_orphans(pending)
        ready = next((t for t in pending if not ledger.waits(t)), None)
        if ready is not None:  # every ready task goes at once: Ray queues it for a worker
            pending.remove(ready)
            if (job := ledger.job(ready)) is not None:
                running[remote.remote(job, shipped.files(job), workspace, placement.threads,
                                      placement.deterministic, placement.loaders)] = ready
            continue
        if not running:  # none left, or only orphans
            break
        (ref,), _ = ray.wait(list(running), num_returns=1)
        task = running.pop(ref)
        try:
            _place(ray.get(ref))
        except Exception as exc:
            ledger.failures[task.name] = _failure(exc)
            continue
        ledger.succeed(task)
    return ledger.failures


def _failure(exc: BaseException) -> Failure:
    """A Ray task's failure as the local pool words it: the job's own exception, or how its
    worker or node was lost."""
    from ray.exceptions import RayTaskError  # lazy: an optional engine

    if isinstance(exc, RayTaskError) and exc.cause is not None:
        cause = exc.cause
        return Failure(one_line(cause), isinstance(cause, UsageError))
    first = (str(exc).strip().splitlines() or [""])[0]
    return Failure(f"its Ray worker was lost ({type(exc).__name__}: {first[:160]}); Ray ran it "
                   f"{RETRIES + 1} times")


def _place(files: dict[str, dict[str, bytes]]) -> None:
    """Swap each directory a job wrote (relative path -> its files) into place, whole."""
    for directory, contents in files.items():
        with atomic_dir(Path(directory)) as tmp:
            for name, data in contents.items():
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)


class _Shipped:
    """Each input file in the object store once: relative path -> (SHA-256, [its ref]); the ref
    inside a list, so that Ray hands it over unfetched and a node that has the file already
    does not fetch it again."""

    def __init__(self) -> None:
        self.known: dict[tuple[str, int, int], tuple[str, list]] = {}

    def files(self, job: Job) -> dict[str, tuple[str, list]]:
        found: dict[str, tuple[str, list]] = {}
        for path in (DATA_FILE, *job.reads):
            path = Path(path)
            for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if file.is_file():
                    found[file.as_posix()] = self.put(file)
        return found

    def put(self, file: Path) -> tuple[str, list]:
        import ray  # lazy: an optional engine

        stat = file.stat()
        key = (file.as_posix(), stat.st_mtime_ns, stat.st_size)
        if key not in self.known:
            data = file.read_bytes()
            self.known[key] = (hashlib.sha256(data).hexdigest(), [ray.put(data)])
        return self.known[key]


def _run_job(job: Job, files: dict[str, tuple[str, list]], workspace: str, threads: int,
             deterministic: bool, loaders: int = 2) -> dict[str, dict[str, bytes]]:
    """On a node: the inputs in its workspace, the job run there with its threads (and the GPU
    Ray gave it), the directories it wrote returned and removed."""
    import ray  # lazy: an optional engine

    root = Path(tempfile.gettempdir()) / "sparsebench-ray" / workspace
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)
    for name, (sha, ref) in files.items():
        _materialise(Path(name), sha, ref, ray.get)
    gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU") or []
    if gpus:  # Ray has set CUDA_VISIBLE_DEVICES to it
        os.environ[ASSIGNED_GPU] = ",".join(gpus)
    else:
        os.environ.pop(ASSIGNED_GPU, None)
    setup_process(threads, None, deterministic, loaders)
    job.fn()
    written = {}
    for directory in map(Path, job.writes):
        written[directory.as_posix()] = {f.relative_to(directory).as_posix(): f.read_bytes()
                                         for f in sorted(directory.rglob("*")) if f.is_file()}
        shutil.rmtree(directory)
    return written


def _materialise(path: Path, sha: str, ref: list, get: Callable[[Any], bytes]) -> None:
    """``path`` in this node's workspace with the content ``sha``: kept when it has it
    (its ``.sha256`` beside it says so), else fetched and written atomically."""
    marker = path.with_name(f".{path.name}.sha256")
    try:
        if marker.read_text() == sha and path.is_file():
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    tmp.write_bytes(get(ref[0]))
    os.replace(tmp, path)
    marker.write_text(sha)
