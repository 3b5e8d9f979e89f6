"""MLflow at the edge: one experiment per suite, one run per method and seed.

The training stages write their curves locally; the evaluate stage creates the run of each
(method, seed) and logs into it, in batches, the curves of every stage the method went through
(pretrain, prune, retrain), its parameters, its final metrics as columns, the masks as an
artifact and the tags (method, suite, seed, git commit, DVC stage). So a failed or unreachable
tracker never costs training, and a run is whole or failed, never half-logged and running.

The store is SQLite under ``<repo>/mlruns/`` unless ``tracking.uri`` or ``MLFLOW_TRACKING_URI``
says otherwise (MLflow 3 refuses the old file store). A fresh SQLite database raced by two
processes crashes (alembic migrations), so it is created under a file lock before first use.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sparsebench.errors import TrackingFailed, UsageError
from sparsebench.paths import repo_root

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100


def tracking_uri(configured: str | None = None) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else SQLite under ``<repo>/mlruns``."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{repo_root() / 'mlruns' / 'mlflow.db'}"


def artifact_root() -> str:
    return (repo_root() / "mlruns" / "artifacts").as_uri()


def client_for(uri: str, experiment: str):
    """An `MlflowClient` and the id of ``experiment``, both created once, under a lock."""
    from filelock import FileLock
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    lock = repo_root() / "mlruns" / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(lock):
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                return client, found.experiment_id
            location = artifact_root() if uri.startswith("sqlite:") else None
            return client, client.create_experiment(experiment, artifact_location=location)
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"tracking.uri: {uri!r} cannot be used ({first}); set tracking.enabled: false to "
            "run without tracking"
        ) from None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Refuse an HTTP(S) tracking server that does not answer, before any work starts."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(
            f"tracking.uri: {uri!r} cannot be reached ({reason}); start the tracking server, "
            "or run without tracking: tracking.enabled: false in params.yaml "
            "(dvc exp run -S tracking.enabled=false)") from None


def logged(what: str, uri: str, local: str):
    """Turn a failure of MLflow in the middle of logging into one line (`TrackingFailed`):
    what was being logged, where the results are on disk, and that the run is FAILED."""
    @contextmanager
    def guard():
        try:
            yield
        except UsageError:
            raise
        except Exception as exc:  # any tracker failure, reported in one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise TrackingFailed(
                f"tracking: logging {what} to {uri!r} failed ({first}); the results are "
                f"written locally ({local}) and the MLflow run is marked FAILED; run the stage "
                "again to log them, or set tracking.enabled: false") from None
    return guard()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=repo_root())
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def curve_metrics(curves: dict[str, list[dict]], start_ms: int) -> list[Any]:
    """Per-epoch curves of each stage as MLflow metrics ``<stage>/<name>`` with step = epoch."""
    from mlflow.entities import Metric

    metrics = []
    for stage, rows in curves.items():
        for row in rows:
            for key, value in row.items():
                if key != "epoch":
                    metrics.append(Metric(f"{stage}/{key}", float(value), start_ms, row["epoch"]))
    return metrics


def log_run(
    uri: str,
    experiment: str,
    *,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, float],
    curves: dict[str, list[dict]],
    artifacts: Iterable[tuple[Path, str]] = (),
    status: str = "FINISHED",
) -> str:
    """Create one run with everything in it, ended with ``status``; return its id.

    Curves and metrics go in batches (one ``log_metric`` call costs ~30 ms on SQLite).
    A failure after the run exists marks it FAILED and re-raises. A ``mlflow.parentRunId``
    tag nests the run under that run (a tuning trial under its study).
    """
    from mlflow.entities import Metric, Param

    client, experiment_id = client_for(uri, experiment)
    now = int(time.time() * 1000)
    all_tags = {**tags, "git_commit": git_commit()}
    run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
    run_id = run.info.run_id
    try:
        finals = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        log_batches(client, run_id, curve_metrics(curves, now) + finals,
                    [Param(k, str(v)[:6000]) for k, v in params.items()])
        for path, artifact_path in artifacts:
            client.log_artifact(run_id, str(path), artifact_path)
    except BaseException:
        with suppress(Exception):  # the tracker may be gone; the first error is the one
            client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status=status)
    return run_id


def log_batches(client: Any, run_id: str, metrics: list[Any], params: list[Any]) -> None:
    """Metrics and params in as few calls as MLflow's batch limits allow."""
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
    for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested params as MLflow params."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: value}
