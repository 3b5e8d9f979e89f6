"""Each run's pruned model as an MLflow 3 LoggedModel, and the best of each level registered.

* `SparseCheckpointModel`: an `mlflow.pyfunc.PythonModel` whose one artifact is the run's
  compressed sparse checkpoint (``model.sparse.safetensors``, the same bytes), rebuilt in
  ``load_context`` by `sparsebench.checkpoint.load`. It is logged as code
  (`sparsebench.tracking.pyfunc`, MLflow's "models from code"), so nothing is pickled. Input:
  float32 images ``(N, C, H, W)`` normalised as the prepared splits are (the model's metadata
  gives the mean and std); output: float32 class scores (logits) ``(N, classes)``, whose
  ``argmax(1)`` is the label.
* `log_run_model`: one run's model as a LoggedModel of its MLflow run (``source_run_id``, an
  output of the run at step 0), with a signature, an input example, the run's figures
  (test accuracy, sparsity, compression, ...) linked as the model's metrics
  (``Metric(model_id=...)``, as `mlflow.models.Model.log` links a run's metrics), its
  parameters, and the tags ``fingerprint``, ``method``, ``level``, ``seed``.
* `publish_models` (the report stage): logs the model of every run that has none yet (a run
  is found by its ``fingerprint`` tag, a model by the same tag: nothing is logged twice), then
  `register_best`: per (suite, level) the best model in the Model Registry as
  ``sparsebench-<suite>-<compression>x-best`` (``...-008x-best``) with the alias ``best``.

Rule for "best" (`best_per_level`): at each level, the method with the highest mean test
accuracy over its seeds (ties: the first key in order), and of that method the run with the
median test accuracy over the seeds (for an even count the lower middle; ties: the lower
seed), so that the registered model is the method's typical run, not its luckiest draw on the
test set. Interpolated levels (no model of their own) and the dense reference are left out.
A version is created only when the chosen model has none yet (a model chosen before gets its
old version back under the alias); its source is the LoggedModel's artifact location, and the
LoggedModel lists it (tag ``mlflow.modelVersions``, as `mlflow.register_model` does).

MLflow 3 references: "LoggedModel" and "Models from code" in the MLflow documentation;
`MlflowClient.create_logged_model`, `log_model_artifacts`, `log_outputs`,
`finalize_logged_model`, `create_model_version(model_id=...)`, `set_registered_model_alias`.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from sparsebench.checkpoint import load
from sparsebench.core.levels import level_name
from sparsebench.data import dataset_info, load_splits
from sparsebench.data.stream import head_of
from sparsebench.run import CHECKPOINT, RESULT, read_result
from sparsebench.tracking.runs import client_for, log_batches
from sparsebench.util.flatten import flatten

CHECKPOINT_ARTIFACT = "checkpoint"  # the key of the checkpoint in the pyfunc's artifacts
ALIAS = "best"
KIND_TAG = "sparsebench_kind"  # tags the LoggedModels this module logs
KIND = "run-model"
BATCH = 1024  # as `sparsebench.core.train.evaluate`, so that scores match the evaluate figures
RULE = ("highest mean test accuracy over seeds; of that method the seed with the median "
        "test accuracy")


class SparseCheckpointModel(PythonModel):
    """A pruned network rebuilt from its compressed sparse checkpoint (see the module doc)."""

    def load_context(self, context) -> None:
        # the model this pyfunc was logged with (a user's builder must be importable here)
        self.model = load(context.artifacts[CHECKPOINT_ARTIFACT], trust_code=True).eval()
        self.shape = input_shape(self.model.arch)

    def predict(self, context, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """Class scores ``(N, classes)`` of float32 images ``(N, C, H, W)``."""
        x = as_images(model_input, self.shape)
        with torch.no_grad():
            return torch.cat([self.model(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
                             or [torch.empty(0)]).numpy()


def input_shape(arch: dict[str, Any]) -> tuple[int, int, int]:
    """``(C, H, W)`` a model built from ``arch`` takes (every sparsebench architecture has
    ``in_channels`` and a square ``image_size``)."""
    args = arch["args"]
    return (int(args["in_channels"]), int(args["image_size"]), int(args["image_size"]))


def as_images(value: Any, shape: tuple[int, int, int]) -> torch.Tensor:
    """``value`` as a float32 tensor ``(N, *shape)`` (float64 is rounded to it), or a one-line
    `ValueError` naming what is expected: the model checks its input itself, before anything
    else reads it (its signature declares the output alone, so MLflow's schema check, which
    prints the whole schema, does not run first)."""
    array = np.asarray(value)
    expected = f"float32 images (N, {', '.join(map(str, shape))})"
    if array.ndim != 4 or tuple(array.shape[1:]) != shape:
        raise ValueError(f"model_input: shape {tuple(array.shape)} is not allowed; allowed: "
                         f"{expected}")
    if array.dtype.kind != "f":
        raise ValueError(f"model_input: dtype {array.dtype} is not allowed; allowed: {expected}"
                         ", normalised as sparsebench.data.splits.load_splits returns them")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def signature_for(arch: dict[str, Any]):
    """The output's schema alone: the input is described in the model's metadata and checked
    by `as_images` in one line."""
    classes = int(arch["args"]["num_classes"])
    return ModelSignature(outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes))]))


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("sparsebench", "torch", "safetensors", "numpy", "mlflow"):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def _label(result: dict[str, Any]) -> str:
    level = "dense" if result["level"] is None else level_name(result["level"])
    point = f"-{result['point']}" if result.get("point") else ""
    return f"{result['key']}-{level}-seed{result['seed']}{point}"


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_run_model(client: Any, experiment_id: str, run_id: str, run_dir: Path,
                  result: dict[str, Any], *, example: np.ndarray | None = None,
                  data: dict[str, Any] | None = None) -> str:
    """Log the run's compressed checkpoint as a pyfunc LoggedModel of run ``run_id``; return
    its model id. ``example`` is the input example (default: one zero image); ``data`` (the
    prepared splits' `dataset_info`) goes into the model's metadata. A failure marks the model
    FAILED and is raised."""

    checkpoint = Path(run_dir) / CHECKPOINT
    arch = load(checkpoint, trust_code=True).arch  # a run of this suite's: its model's code
    sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    tags = {KIND_TAG: KIND, "fingerprint": result["fingerprint"], "method": result["method"],
            "method_key": result["key"], "level": str(result["level"]),
            "seed": str(result["seed"]), "point": result.get("point") or "",
            "checkpoint_sha256": sha256}
    params = {"method_key": result["key"], "level": result["level"], "seed": result["seed"],
              **flatten("method", result.get("params", {})), "arch": json.dumps(arch)}
    logged = client.create_logged_model(
        experiment_id, name=_label(result), source_run_id=run_id, tags=tags,
        params={k: str(v)[:6000] for k, v in params.items()}, model_type="classifier")
    model_id = logged.model_id
    try:
        if example is None:
            example = np.zeros((1, *input_shape(arch)), dtype=np.float32)
        metadata = {"checkpoint_sha256": sha256, "arch": arch,
                    "input": f"float32 images (N, {', '.join(map(str, input_shape(arch)))}), "
                             "normalised as sparsebench.data.splits.load_splits returns them",
                    "output": "float32 class scores (N, classes); argmax(1) is the label"}
        if data is not None:
            metadata.update({k: data[k] for k in ("dataset", "mean", "std") if k in data})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "model")
            mlflow.pyfunc.save_model(
                path, python_model=str(Path(__file__).with_name("pyfunc.py")),
                artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
                signature=signature_for(arch), input_example=example,
                pip_requirements=_requirements(), metadata=metadata,
                mlflow_model=Model(artifact_path=logged.artifact_location, model_uuid=model_id,
                                   run_id=run_id, model_id=model_id))
            client.log_model_artifacts(model_id, str(path))
        client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
        _link_metrics(client, run_id, model_id, _numbers(result["figures"]))
    except BaseException:
        with suppress(Exception):  # the tracker may be gone; the first error is the one
            client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    return model_id


def _link_metrics(client: Any, run_id: str, model_id: str, figures: dict[str, float]) -> None:
    """The run's figures as the model's metrics: each logged again with ``model_id`` and the
    run's own timestamp and step where the run has that value (MLflow drops the repeated run
    row), else as a new step-0 value of the run."""

    now = int(time.time() * 1000)
    metrics = []
    for key, value in figures.items():
        same = [m for m in client.get_metric_history(run_id, key) if m.value == value]
        stamp, step = (same[-1].timestamp, same[-1].step) if same else (now, 0)
        metrics.append(Metric(key, value, stamp, step, run_id=run_id, model_id=model_id))
    log_batches(client, run_id, metrics, [])


# --------------------------------------------------------------------------------------------
# The report stage: every run's model, the best per level registered
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The registered pick of one level: method key, seed, and the accuracies behind it."""
    level: float
    key: str
    seed: int
    test_accuracy: float
    mean_test_accuracy: float


def best_per_level(rows: Iterable[dict[str, Any]]) -> list[Choice]:
    """The module's rule over the report's rows (one per method, level, seed)."""
    by_level: dict[float, dict[str, list[dict]]] = {}
    for row in rows:
        if row["interpolated"] or row["level_sparsity"] == 0.0:
            continue
        by_level.setdefault(row["level"], {}).setdefault(row["method"], []).append(row)
    choices = []
    for level, methods in sorted(by_level.items()):
        means = {key: statistics.fmean(r["test_accuracy"] for r in runs)
                 for key, runs in methods.items()}
        key = max(means, key=lambda k: (means[k], -list(means).index(k)))
        runs = sorted(methods[key], key=lambda r: (r["test_accuracy"], r["seed"]))
        median = runs[(len(runs) - 1) // 2]
        choices.append(Choice(level, key, int(median["seed"]), median["test_accuracy"],
                              means[key]))
    return choices


def registered_name(suite: str, level: float) -> str:
    """``sparsebench-default-008x-best``: the compression padded to three digits, so that the
    registered models sort in level order as text (008x < 016x < 128x)."""
    whole, dot, fraction = f"{level:.4g}".partition(".")
    return f"sparsebench-{suite}-{whole:0>3}{dot}{fraction}x-best"


@contextmanager
def _quiet():
    """MLflow without a progress bar and an INFO line per saved model, for the block."""
    import logging

    saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger = logging.getLogger("mlflow")
    level = logger.level
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved


def _all(search, *args, **kwargs) -> list:
    out, token = [], None
    while True:
        page = search(*args, **kwargs, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def publish_models(uri: str, experiment: str, suite: str, rows: list[dict[str, Any]],
                   run_dirs: Iterable[Path], data_file: Path | None = None) -> dict[str, Any]:
    """Log every run's model not logged yet, then register the best per level.

    Args:
        uri, experiment: The tracking store and the suite's experiment.
        suite: The suite's name (registered model names carry it).
        rows: The report's rows (`sparsebench.report.rows.curve_rows`).
        run_dirs: Every run's directory (``result.json`` and the checkpoint in it).
        data_file: The prepared splits: the input example is its first validation image.

    Returns:
        ``{"logged": n, "seconds_per_model": s, "missing_runs": [...], "registered":
        [(name, version, created), ...]}``.
    """

    client, experiment_id = client_for(uri, experiment)
    runs = {r.data.tags["fingerprint"]: r.info.run_id for r in _all(
        client.search_runs, [experiment_id], "", max_results=5000)
        if "fingerprint" in r.data.tags}  # a run (method, level, seed) by its fingerprint tag
    models = {m.tags.get("fingerprint"): m.model_id for m in _all(
        client.search_logged_models, [experiment_id], f"tags.{KIND_TAG} = '{KIND}'",
        max_results=1000) if m.status == LoggedModelStatus.READY}
    example, data = None, None
    if data_file is not None and Path(data_file).exists():
        data = dataset_info(data_file)
        example = head_of(load_splits(data_file, ("val",))["val"], 1).numpy()
    chosen: dict[tuple[str, float, int], tuple[str, str]] = {}
    logged, seconds, missing = 0, 0.0, []
    with _quiet():
        for run_dir in run_dirs:
            result = read_result(json.loads((Path(run_dir) / RESULT).read_text()))
            fp = result["fingerprint"]
            if fp not in runs:
                missing.append(_label(result))
                continue
            if fp not in models:
                started = time.perf_counter()
                models[fp] = log_run_model(client, experiment_id, runs[fp], Path(run_dir),
                                           result, example=example, data=data)
                seconds += time.perf_counter() - started
                logged += 1
            if result["level"] is not None and not result.get("point"):
                chosen[(result["key"], result["level"], result["seed"])] = (models[fp],
                                                                             runs[fp])
        registered = register_best(client, suite, best_per_level(rows), chosen)
    return {"logged": logged, "seconds_per_model": seconds / logged if logged else 0.0,
            "missing_runs": missing, "registered": registered}


def register_best(client: Any, suite: str, choices: list[Choice],
                  models: dict[tuple[str, float, int], tuple[str, str]]
                  ) -> list[tuple[str, str, bool]]:
    """Point each level's registered model's alias ``best`` at its choice's LoggedModel; a
    new version only when no version holds that model yet. ``models`` maps (method key,
    level, seed) to (model id, run id). Returns (name, version, created) per level."""

    out = []
    for choice in choices:
        found = models.get((choice.key, choice.level, choice.seed))
        if found is None:
            continue  # its run is not in the tracking store
        model_id, run_id = found
        name = registered_name(suite, choice.level)
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name, tags={"suite": suite, "level": str(choice.level), "rule": RULE},
                description=f"The best pruned model of suite {suite!r} at {choice.level:.4g}x "
                            f"compression ({RULE}); load it with "
                            f"mlflow.pyfunc.load_model('models:/{name}@{ALIAS}').")
        versions = _all(client.search_model_versions, f"name = '{name}'", max_results=1000)
        # the model's own artifact location as the source: a "models:/<id>" source would be
        # resolved through MLflow's global tracking URI, not this client's
        source = client.get_logged_model(model_id).artifact_location
        version = next((v for v in versions if v.source == source), None)
        created = version is None
        if created:
            version = client.create_model_version(
                name, source=source, run_id=run_id, model_id=model_id,
                tags={"method_key": choice.key, "seed": str(choice.seed),
                      "test_accuracy": repr(choice.test_accuracy),
                      "mean_test_accuracy": repr(choice.mean_test_accuracy)})
            _link_version(client, model_id, name, str(version.version))
        client.set_registered_model_alias(name, ALIAS, version.version)
        client.set_registered_model_tag(name, "method_key", choice.key)
        out.append((name, str(version.version), created))
    return out


def _link_version(client: Any, model_id: str, name: str, version: str) -> None:
    """The version listed on its LoggedModel (tag ``mlflow.modelVersions``), as
    `mlflow.register_model` does, so that the model's page shows it."""

    tags = client.get_logged_model(model_id).tags
    versions = json.loads(tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    if {"name": name, "version": version} not in versions:
        versions.append({"name": name, "version": version})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
