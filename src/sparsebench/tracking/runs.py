"""MLflow at the edge: one experiment per suite, live runs, a run whole once its stage ends.

The layout (one experiment per suite): per (method, level) a parent run holding the report's
numbers (mean and std over seeds), under it one run per (method, level, seed); one run per seed
of the pretrain stage; one ``report`` run. Every run carries the tags ``method``, ``family``,
``level``, ``seed``, ``params_source``, ``git_commit``, ``code_digest``, ``dvc_stage`` and
``fingerprint`` (the cached run's key: how a run is found again), and its data set as an MLflow
input (name, source, digest and split sizes of the prepared splits).

Live: the worker process that trains a run opens its MLflow run at training start (`LiveRun`)
and logs each epoch's figures with step = epoch as they come (``<phase>/<figure>``: the UI's
charts grow while the stage runs), then its final metrics, artifacts and end time once the run
is evaluated, so its duration is the run's wall time. A background thread does the talking: an
epoch only appends to a queue (`benchmarks/tracking_overhead.py` measures the cost), and a
tracker that fails or stops answering never stops training. A resumed run continues the same
MLflow run (its id is kept in the run's work directory, and the fingerprint tag finds it too).

Whole: when the stage's training is done, the stage process reads the runs back and completes
from each run's own records (``curves.json``, ``result.json``, its files) whatever the server
lacks (`sync_run`): a cached run that was never logged, epochs lost while the server was down,
a run whose worker was killed. Completing is idempotent (a step, a metric value, a param, a
data set or an artifact already there is not sent again), so a stage run twice, or a stage
re-run after a tracker failure, leaves one run per (method, level, seed) and no duplicate
point. If the tracker fails there, the stage exits 1 with one line (`TrackingFailed`) after
its training and files are done; DVC reruns it, and the rerun (all runs cached) logs the rest.

The store is SQLite under ``<repo>/mlruns/`` unless ``tracking.uri`` or ``MLFLOW_TRACKING_URI``
says otherwise (MLflow 3 refuses the old file store); ``http://host:port`` is an ``mlflow
server``, checked before any work starts (`check_reachable`). A fresh SQLite database raced by
two processes crashes (alembic migrations), so it is created under a file lock before first use;
parent runs are looked up or created under the same lock, so parallel stages never make two.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sparsebench.util.errors import TrackingFailed, UsageError
from sparsebench.util.paths import atomic_write, repo_root

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


#: the experiment's kind for MLflow 3's UI: it opens a model-training experiment on its runs
#: table (with charts), not on the GenAI traces view it shows an experiment of no kind
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


#: the saved view that opens the comparison: the parents' test accuracy against
#: log2(compression), one colour per method (`sparsebench.pipeline.tracker.COLOUR_TAG`);
#: MLflow 3's UI loads it from the experiment tag ``mlflow.sharedViewState.<key>``, by the URL
#: ``#/experiments/<id>/runs?viewStateShareKey=<key>&compareRunsMode=CHART`` or its Views menu
COMPARISON_VIEW = "sparsebench-comparison"


def comparison_view_state(leave_out: list[str] = ()) -> dict[str, Any]:
    """The view: the (method, level) parents but those of ``leave_out``, all shown, with their
    test accuracy and compression as table columns, and one scatter chart."""
    section = "sparsebench-comparison"
    search = " and ".join(["tags.run_kind = 'parent'",
                           *(f"tags.method != '{m}'" for m in leave_out)])
    columns = [f"metrics.`{m}`" for m in ("test_accuracy_mean", "test_accuracy_std",
                                          "compression_mean", "log2_compression")]
    return {"searchFilter": search, "orderByKey": "attributes.start_time",
            "orderByAsc": False, "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": True,
            "selectedColumns": [*columns, "tags.`method`", "tags.`level`"],
            "compareRunSections": [{"uuid": section, "name": "Accuracy vs compression",
                                    "display": True, "isReordered": False, "deleted": False,
                                    "isGenerated": False}],
            "compareRunCharts": [{"uuid": "sparsebench-scatter", "type": "SCATTER",
                                  "runsCountToCompare": 1000, "metricSectionId": section,
                                  "deleted": False, "isGenerated": False,
                                  "xaxis": {"key": "log2_compression", "type": "METRIC"},
                                  "yaxis": {"key": "test_accuracy_mean", "type": "METRIC"}}]}


def save_comparison_view(client: Any, experiment_id: str, leave_out: list[str] = ()) -> None:
    """Write (or rewrite) the experiment's saved view `COMPARISON_VIEW` (without the parents
    of the methods in ``leave_out``)."""
    now = int(time.time() * 1000)
    value = {"name": "accuracy vs compression (parents, by method)", "createdAt": now,
             "updatedAt": now, "state": json.dumps(comparison_view_state(leave_out))}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{COMPARISON_VIEW}",
                              json.dumps(value))


def client_for(uri: str, experiment: str):
    """An `MlflowClient` and the id of ``experiment``, both created once, under a lock."""
    from filelock import FileLock
    from mlflow import MlflowClient  # lazy: mlflow takes about 3 s to import
    from mlflow.exceptions import MlflowException  # lazy: mlflow takes about 3 s to import

    lock = repo_root() / "mlruns" / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(lock):
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                if found.tags.get(KIND_TAG) != KIND:
                    client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
                return client, found.experiment_id
            location = artifact_root() if uri.startswith("sqlite:") else None
            return client, client.create_experiment(experiment, artifact_location=location,
                                                    tags={KIND_TAG: KIND})
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
    from mlflow.entities import Metric  # lazy: mlflow takes about 3 s to import

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
    from mlflow.entities import Metric, Param  # lazy: mlflow takes about 3 s to import

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


#: HTTP retries of the MLflow client while the user has not set them: MLflow's defaults (7
#: retries, backoff factor 2) wait minutes on a stopped server; a stage completes its runs from
#: their records at its end anyway, so a few seconds is enough.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # the stage prints its own


for _name, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)


FINISHED = "FINISHED"


RUN_STATE = "mlflow_run.json"  # the live run's id, in the run's work directory


def _after_fork_in_child() -> None:
    """A forked worker must not use its parent's database connections or HTTP sockets
    (SQLAlchemy's pooling guide: ``engine.dispose(close=False)`` in the child)."""
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store is not None:
        for engine in list(store.SqlAlchemyStore._engine_map.values()):
            with suppress(Exception):
                engine.dispose(close=False)
    requests = sys.modules.get("mlflow.utils.request_utils")
    if requests is not None:
        with suppress(Exception):
            requests._cached_get_request_session.cache_clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class RunInfo:
    """What a run is before it trains: where it goes and what it is called, its tags, params
    and data set. ``tags["fingerprint"]`` identifies it (one MLflow run per fingerprint)."""

    uri: str
    experiment_id: str
    name: str
    tags: dict[str, str]
    params: dict[str, Any]
    dataset: Any = None  # an mlflow.entities.DatasetInput

    @property
    def fingerprint(self) -> str:
        return self.tags["fingerprint"]


@dataclass
class Records:
    """What a finished run wrote locally: its curves per phase, final metrics, the files to
    attach (path, artifact directory) and its wall-clock start and end (ms since the epoch)."""

    curves: dict[str, list[dict]]
    metrics: dict[str, float]
    artifacts: list[tuple[Path, str]] = field(default_factory=list)
    start_ms: int | None = None
    end_ms: int | None = None


def _figures(row: dict) -> dict[str, float]:
    """The numbers of a curve row but its epoch."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def row_metrics(phase: str, row: dict, timestamp: int) -> list[Any]:
    """One curve row as MLflow metrics ``<phase>/<figure>`` at step = its epoch."""
    from mlflow.entities import Metric  # lazy: mlflow takes about 3 s to import

    return [Metric(f"{phase}/{key}", value, timestamp, int(row["epoch"]))
            for key, value in _figures(row).items()]


def _marker(phase: str, row: dict) -> str | None:
    """The metric whose steps say which rows of a phase are logged (a row goes in one batch,
    so one of its metrics present means all are)."""
    keys = sorted(_figures(row))
    return f"{phase}/{keys[0]}" if keys else None


class _Steps:
    """The steps already logged per marker metric of one run (read once, then kept up to date)."""

    def __init__(self, client: Any, run_id: str, known: dict[str, float] | None):
        self.client, self.run_id = client, run_id
        self.known = known  # the run's latest metrics; None: a run just created (nothing in it)
        self.steps: dict[str, set[int]] = {}

    def logged(self, marker: str) -> set[int]:
        if marker not in self.steps:
            if self.known is None or marker not in self.known:
                self.steps[marker] = set()
            else:
                self.steps[marker] = {m.step for m in
                                      self.client.get_metric_history(self.run_id, marker)}
        return self.steps[marker]

    def missing(self, phase: str, rows: list[dict], timestamp: int) -> list[Any]:
        """The metrics of the rows not logged yet (marked logged)."""
        out = []
        for row in rows:
            marker = _marker(phase, row)
            if marker is None or int(row["epoch"]) in self.logged(marker):
                continue
            self.steps[marker].add(int(row["epoch"]))
            out += row_metrics(phase, row, timestamp)
        return out


def _params(info: RunInfo) -> list[Any]:
    from mlflow.entities import Param  # lazy: mlflow takes about 3 s to import

    return [Param(k, str(v)[:6000]) for k, v in info.params.items()]


def open_run(client: Any, info: RunInfo, start_ms: int | None = None) -> str:
    """Create the run with its tags, params and data set; return its id."""
    run = client.create_run(info.experiment_id, start_time=start_ms, tags=info.tags,
                            run_name=info.name)
    log_batches(client, run.info.run_id, [], _params(info))
    if info.dataset is not None:
        log_dataset(client, run.info.run_id, info.dataset)
    return run.info.run_id


#: how a store reports an insert its unique constraint refused: SQLite ("UNIQUE constraint
#: failed"), PostgreSQL ("duplicate key value violates unique constraint"), MySQL ("Duplicate
#: entry"); MLflow passes the driver's message on, over REST too
_DUPLICATE = re.compile(r"unique constraint|duplicate (key|entry)", re.IGNORECASE)


def log_dataset(client: Any, run_id: str, dataset: Any) -> None:
    """Log the data set input ``dataset`` to ``run_id``. Runs started side by side (the
    workers of a stage) race to insert the same data set into their experiment: MLflow checks
    that it is absent, then inserts it, so the losers fail on the store's unique constraint
    (SQLite and PostgreSQL alike) and nothing of theirs was written. Once more then finds the
    winner's row and only links it to this run. Any other failure (a deleted run, a server
    out of reach) is raised at once, not tried twice."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow takes about 3 s to import

    try:
        client.log_inputs(run_id, datasets=[dataset])
    except MlflowException as exc:
        if not _DUPLICATE.search(str(exc)):
            raise
        client.log_inputs(run_id, datasets=[dataset])


def complete_run(client: Any, run_id: str, info: RunInfo, records: Records,
                 steps: _Steps | None = None) -> None:
    """Log what the run ``run_id`` lacks of ``records`` and end it FINISHED at
    ``records.end_ms``; what is there already is not sent again."""
    from mlflow.entities import Metric, RunTag  # lazy: mlflow takes about 3 s to import

    run = client.get_run(run_id)
    stamp = records.end_ms or now_ms()
    steps = steps or _Steps(client, run_id, dict(run.data.metrics))
    metrics = [m for phase, rows in records.curves.items()
               for m in steps.missing(phase, rows, stamp)]
    metrics += [Metric(k, float(v), stamp, 0) for k, v in records.metrics.items()
                if run.data.metrics.get(k) != float(v)]
    params = [p for p in _params(info) if p.key not in run.data.params]
    tags = [RunTag(k, v) for k, v in info.tags.items() if run.data.tags.get(k) != v]
    log_batches(client, run_id, metrics, params)
    if tags:
        client.log_batch(run_id, tags=tags)
    if info.dataset is not None and not any(
            d.dataset.digest == info.dataset.dataset.digest for d in run.inputs.dataset_inputs):
        log_dataset(client, run_id, info.dataset)
    for path, artifact_path in records.artifacts:
        present = {a.path for a in client.list_artifacts(run_id, artifact_path)}
        if f"{artifact_path}/{Path(path).name}" not in present:
            client.log_artifact(run_id, str(path), artifact_path)
    client.set_terminated(run_id, status=FINISHED, end_time=records.end_ms)


def find_runs(client: Any, experiment_id: str, filter_string: str) -> dict[str, Any]:
    """The runs matching ``filter_string`` by their fingerprint tag (a finished one first)."""
    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000,
                                  page_token=token)
        for run in page:
            fp = run.data.tags.get("fingerprint")
            if fp is not None and (fp not in found or run.info.status == FINISHED):
                found[fp] = run
        token = page.token
        if not token:
            return found


def sync_run(client: Any, info: RunInfo, records: Records, existing: Any | None) -> str | None:
    """Make the server hold the finished run ``info`` whole: nothing when ``existing`` is
    FINISHED, else complete it, or create it (dated by its records) when there is none.
    Returns the id of a run it wrote to."""
    if existing is not None and existing.info.status == FINISHED:
        return None
    if existing is not None:
        run_id = existing.info.run_id
    else:
        run_id = open_run(client, info, records.start_ms)
    try:
        complete_run(client, run_id, info, records)
    except BaseException:
        with suppress(Exception):  # the tracker may be gone; the first error is the one
            client.set_terminated(run_id, status="FAILED")
        raise
    return run_id


class LiveRun:
    """The MLflow run of one training run, opened and fed from the process that trains it.

    `start` returns at once: a background thread creates the run (or finds the one an earlier,
    killed start of the same run opened: its id in ``state``, else its fingerprint tag), then
    sends the queued epoch metrics in batches. `epoch` (the training's ``on_epoch`` hook) only
    queues. `finish` queues the run's records, waits for the thread, and returns None or the
    one-line reason the tracking stopped; training never waits on the tracker otherwise.
    A run already FINISHED on the server (same fingerprint) is not logged again.
    """

    def __init__(self, info: RunInfo, state: Path | None = None, label: str = ""):
        self.info, self.state, self.label = info, state, label or info.name
        self.run_id: str | None = None
        self.error: str | None = None
        self.skipped = False
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._steps: _Steps | None = None
        self._client: Any = None

    def start(self) -> LiveRun:
        self.start_ms = now_ms()
        self._thread = threading.Thread(target=self._work, name=f"mlflow {self.label}",
                                        daemon=True)
        self._thread.start()
        return self

    def epoch(self, phase: str, row: dict) -> None:
        self._queue.put((phase, dict(row)))

    def finish(self, records: Records | None, status: str = FINISHED,
               timeout: float = 600.0) -> str | None:
        """Queue the end of the run (``records`` on success; None ends it with ``status``),
        wait for the thread; the reason tracking stopped, if it did."""
        self._queue.put(("$end", (records, status)))
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.error = self.error or f"no answer from {self.info.uri!r} in {timeout:.0f}s"
        return self.error

    def _work(self) -> None:
        ending = None
        try:
            from mlflow import MlflowClient  # lazy: mlflow takes about 3 s to import

            self._client = MlflowClient(tracking_uri=self.info.uri)
            self._open()
            while ending is None:
                items = [self._queue.get()]
                while not self._queue.empty():
                    items.append(self._queue.get_nowait())
                rows = [i for i in items if i[0] != "$end"]
                ending = next((i[1] for i in items if i[0] == "$end"), None)
                if self.skipped:
                    continue
                stamp = now_ms()
                metrics = [m for phase, row in rows
                           for m in self._steps.missing(phase, [row], stamp)]
                log_batches(self._client, self.run_id, metrics, [])
            if not self.skipped:
                records, status = ending
                if records is None:
                    self._client.set_terminated(self.run_id, status=status)
                else:
                    complete_run(self._client, self.run_id, self.info, records, self._steps)
        except Exception as exc:  # tracking stops; training goes on; the stage completes it
            self.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            print(f"run {self.label}: tracking: live logging stopped ({self.error}); the stage "
                  "logs the run from its records when its training is done", flush=True)
            if self.run_id is not None:
                with suppress(Exception):  # the tracker may be gone
                    self._client.set_terminated(self.run_id, status="FAILED")
            while ending is None:  # drain: finish() must not wait
                item = self._queue.get()
                if item[0] == "$end":
                    ending = item[1]

    def _open(self) -> None:
        client, info = self._client, self.info
        run = None
        saved = self._saved_id()
        if saved is not None:
            with suppress(Exception):
                run = client.get_run(saved)
                if run.info.lifecycle_stage != "active":
                    run = None
        if run is None:
            run = find_runs(client, info.experiment_id,
                            f"tags.fingerprint = '{info.fingerprint}'").get(info.fingerprint)
        if run is not None and run.info.status == FINISHED:
            self.skipped = True  # the same run (same fingerprint) is logged whole already
            return
        if run is None:
            self.run_id = open_run(client, info, self.start_ms)
            self._steps = _Steps(client, self.run_id, None)
        else:
            self.run_id = run.info.run_id
            client.update_run(self.run_id, status="RUNNING")
            self._steps = _Steps(client, self.run_id, dict(run.data.metrics))
        self._save_id()

    def _saved_id(self) -> str | None:
        if self.state is None:
            return None
        try:
            saved = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return None
        if saved.get("uri") == self.info.uri and saved.get("fingerprint") == self.info.fingerprint:
            return saved.get("run_id")
        return None

    def _save_id(self) -> None:
        """Written only while the work directory exists (a finished run's is deleted)."""
        if self.state is None or not self.state.parent.is_dir():
            return
        with suppress(OSError):
            atomic_write(self.state, json.dumps({"uri": self.info.uri, "run_id": self.run_id,
                                                 "fingerprint": self.info.fingerprint}))


def dataset_input(path: Path, info: dict[str, Any], origin: str) -> Any:
    """The prepared splits as an MLflow data set input: name, source (the file and where its raw
    files came from), digest (SHA-256 of the file, first 32 hex digits: MLflow's column holds
    36), the split sizes as its profile."""
    import hashlib

    # lazy: mlflow takes about 3 s to import
    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    name = info["dataset"] if info.get("limit") is None else f"{info['dataset']}-{info['limit']}"
    source = {"uri": Path(path).resolve().as_uri(), "origin": origin,
              "raw_sha256": info.get("raw_sha256", {})}
    profile = {"sizes": info["sizes"], "num_classes": info["num_classes"],
               "shape": list(info["shape"]), "split_seed": info["seed"], "sha256": sha}
    schema = {"x": ["uint8", *info["shape"]], "y": "int64"}
    if info.get("images"):  # an image folder: files decoded and cropped to shape
        source["dir"] = info["images"]["dir"]
        schema = {"x": ["image file", *info["shape"]], "y": "int64"}
    dataset = Dataset(name=name, digest=sha[:32], source_type="local",
                      source=json.dumps(source), profile=json.dumps(profile),
                      schema=json.dumps(schema))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])
