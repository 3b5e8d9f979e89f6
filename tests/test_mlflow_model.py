"""Logged and registered models (`sparsebench.tracking.models`): the CLI's stages on MNIST-shaped
synthetic data (1 x 28 x 28, 10 classes) with a real SQLite MLflow store in tmp_path, then
the registered models loaded back by `mlflow.pyfunc.load_model("models:/<name>@best")`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import seed_store, small_params

from sparsebench.tracking.models import (
    ALIAS,
    Choice,
    as_images,
    best_per_level,
    register_best,
    registered_name,
)

pytestmark = pytest.mark.slow
METHODS = ("dense", "magnitude", "gmp")
LEVELS = (8.0, 32.0)


def _uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def published(tmp_path_factory, store_template):
    """A workspace after prepare, pretrain, run (dense, magnitude, gmp) (levels 8x and 32x, seeds
    0-2) and report, tracked in its own SQLite store, which $MLFLOW_TRACKING_URI then names
    for the tests (`mlflow.pyfunc.load_model` reads it)."""
    from sparsebench.pipeline.cli import main

    root = tmp_path_factory.mktemp("models")
    seed_store(store_template, root / "mlruns" / "mlflow.db")
    path = small_params(root)
    raw = yaml.safe_load(path.read_text())
    raw["seeds"] = [0, 1, 2]
    raw["data"].update(synthetic_shape=[1, 28, 28], synthetic_classes=10, limit=300)
    raw["levels"]["compression"] = list(LEVELS)
    raw["methods"] = {k: raw["methods"][k] for k in METHODS}
    raw["tune"]["spaces"] = {k: v for k, v in raw["tune"]["spaces"].items() if k in METHODS}
    raw["budget"] = None
    raw["execution"]["workers"] = 1
    path.write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as env:
        env.chdir(root)
        env.setenv("SPARSEBENCH_ROOT", str(root))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)  # the stages find the store alone
        for stage in ("prepare", "pretrain"):
            assert main([stage, "--params", str(path)]) == 0
        for key in METHODS:
            assert main(["run", "--params", str(path), "--method", key]) == 0
        assert main(["report", "--params", str(path)]) == 0
        assert not (root / "mlflow.db").exists()  # nothing went to MLflow's default store
        env.setenv("MLFLOW_TRACKING_URI", _uri(root))
        yield root, path


def _report_rows(root: Path) -> list[dict]:
    return list(csv.DictReader((root / "reports" / "curves.csv").open()))


def _test_split(root: Path):
    from sparsebench.data import load_splits

    x, y = load_splits(root / "data" / "prepared" / "splits.safetensors", ("test",))["test"]
    return x.numpy(), y.numpy()


def test_registered_model_predicts_the_reports_accuracy_for_its_run(published):
    import mlflow

    root, _ = published
    client = mlflow.MlflowClient()
    x, y = _test_split(root)
    assert x.shape[1:] == (1, 28, 28) and x.dtype == np.float32
    rows = _report_rows(root)
    for level in LEVELS:
        name = registered_name("default", level)
        version = client.get_model_version_by_alias(name, ALIAS)
        key, seed = version.tags["method_key"], int(version.tags["seed"])
        logged = client.get_logged_model(mlflow.models.get_model_info(
            f"models:/{name}@{ALIAS}").model_id)
        assert json.loads(logged.tags["mlflow.modelVersions"]) == [
            {"name": name, "version": str(version.version)}]  # the model's page lists it
        model = mlflow.pyfunc.load_model(f"models:/{name}@{ALIAS}")
        scores = model.predict(x)
        assert scores.shape == (len(x), 10) and scores.dtype == np.float32
        accuracy = float((scores.argmax(1) == y).mean())
        row = next(r for r in rows if r["method"] == key and float(r["level"]) == level
                   and int(r["seed"]) == seed)
        assert accuracy == float(row["test_accuracy"])
        # the rule: the method with the highest mean over seeds, its median seed
        here = [r for r in rows if float(r["level"]) == level]
        means = {m: np.mean([float(r["test_accuracy"]) for r in here if r["method"] == m])
                 for m in {r["method"] for r in here}}
        assert means[key] == max(means.values())
        accuracies = sorted(float(r["test_accuracy"]) for r in here if r["method"] == key)
        assert float(row["test_accuracy"]) == accuracies[1]


def test_logged_model_is_the_runs_compressed_checkpoint_linked_to_its_run(published):
    import mlflow
    from mlflow.entities import LoggedModelStatus

    root, _ = published
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("sparsebench-default")
    models = client.search_logged_models([experiment.experiment_id])
    assert len(models) == len(_report_rows(root))  # every run, dense included, once
    for model in models:
        assert model.status == LoggedModelStatus.READY
        run = client.get_run(model.source_run_id)
        assert run.data.tags["fingerprint"] == model.tags["fingerprint"]
        assert model.model_id in [o.model_id for o in run.outputs.model_outputs]
        level = "dense" if model.tags["level"] == "None" else f"c{float(model.tags['level']):.4g}"
        run_dir = root / "runs" / model.tags["method_key"] / level / f"seed{model.tags['seed']}"
        result = json.loads((run_dir / "result.json").read_text())
        linked = {m.key: m.value for m in model.metrics}
        assert linked["test_accuracy"] == result["figures"]["test_accuracy"]
        assert linked["compression"] == pytest.approx(
            result["figures"]["compression"])
        # linked, not repeated: the run keeps one test_accuracy value
        assert len(client.get_metric_history(run.info.run_id, "test_accuracy")) == 1
    model = models[0]
    local = Path(mlflow.artifacts.download_artifacts(model.artifact_location))
    level = "dense" if model.tags["level"] == "None" else f"c{float(model.tags['level']):.4g}"
    checkpoint = (root / "runs" / model.tags["method_key"] / level / f"seed{model.tags['seed']}"
                  / "model.sparse.safetensors")
    assert (local / "artifacts" / "model.sparse.safetensors").read_bytes() == \
        checkpoint.read_bytes()
    assert not list(local.rglob("*.pkl"))  # models from code: nothing pickled
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["model_id"] == model.model_id and mlmodel["run_id"] == model.source_run_id
    assert mlmodel["signature"].get("inputs") is None  # checked by the model, in one line
    assert json.loads(mlmodel["signature"]["outputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]
    assert mlmodel["metadata"]["input"].startswith("float32 images (N, 1, 28, 28)")
    assert (local / "input_example.json").exists()


def test_wrong_input_is_refused_in_one_line(published):
    """uint8 pixels (not normalised) and a flat batch: the model's own one-line refusal,
    naming what it expects, before MLflow reads the input (no input schema to enforce)."""
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{registered_name('default', 8.0)}@{ALIAS}")
    with pytest.raises(ValueError, match=r"^model_input: shape \(2, 784\) is not allowed; "
                                         r"allowed: float32 images \(N, 1, 28, 28\)$"):
        model.predict(np.zeros((2, 784), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^model_input: dtype uint8 is not allowed; allowed: "
                                         r"float32 images \(N, 1, 28, 28\), normalised as "
                                         r"sparsebench.data.splits.load_splits returns them$"):
        model.predict(np.zeros((2, 1, 28, 28), dtype=np.uint8))
    x64 = np.zeros((2, 1, 28, 28))  # float64 (JSON served): rounded to float32
    assert np.array_equal(model.predict(x64), model.predict(x64.astype(np.float32)))
    with pytest.raises(ValueError, match="model_input: dtype int64 is not allowed"):
        as_images(np.zeros((1, 1, 28, 28), dtype=np.int64), (1, 28, 28))


def test_report_again_logs_and_registers_nothing_new(published):
    import mlflow

    from sparsebench.pipeline.cli import main

    _, params = published
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("sparsebench-default")

    def state():
        models = client.search_logged_models([experiment.experiment_id])
        versions = {registered_name("default", lv): [
            v.version for v in client.search_model_versions(
                f"name = '{registered_name('default', lv)}'")] for lv in LEVELS}
        return len(models), versions

    before = state()
    assert main(["report", "--params", str(params)]) == 0
    assert state() == before
    assert all([str(v) for v in versions] == ["1"] for versions in before[1].values())


def test_a_new_best_is_a_new_version_and_an_old_one_is_reused(published):
    import mlflow

    client = mlflow.MlflowClient()
    name = registered_name("default", 32.0)
    first = client.get_model_version_by_alias(name, ALIAS)
    experiment = client.get_experiment_by_name("sparsebench-default")
    other = next(m for m in client.search_logged_models([experiment.experiment_id])
                 if m.tags["level"] == "32.0" and m.tags["method_key"] == "magnitude"
                 and m.tags["seed"] == "0")
    pick = Choice(32.0, "magnitude", 0, 0.5, 0.5)
    models = {("magnitude", 32.0, 0): (other.model_id, other.source_run_id)}
    assert register_best(client, "default", [pick], models) == [(name, "2", True)]
    assert client.get_model_version_by_alias(name, ALIAS).source == other.artifact_location
    back = {(first.tags["method_key"], 32.0, int(first.tags["seed"])):
            (next(m.model_id for m in client.search_logged_models([experiment.experiment_id])
                  if m.artifact_location == first.source), first.run_id)}
    again = Choice(32.0, first.tags["method_key"], int(first.tags["seed"]), 0.9, 0.9)
    assert register_best(client, "default", [again], back) == [(name, "1", False)]
    assert str(client.get_model_version_by_alias(name, ALIAS).version) == "1"


def _row(method: str, level: float, seed: int, accuracy: float, **extra) -> dict:
    return {"method": method, "level": level, "seed": seed, "test_accuracy": accuracy,
            "level_sparsity": 0.0 if level == 1.0 else 1 - 1 / level, "interpolated": False,
            **extra}


def test_best_is_the_highest_mean_method_and_its_median_seed():
    rows = [_row("dense", 1.0, s, 0.99) for s in range(3)]  # the reference: never registered
    rows += [_row("a", 8.0, 0, 0.90), _row("a", 8.0, 1, 0.97), _row("a", 8.0, 2, 0.93),
             _row("b", 8.0, 0, 0.98), _row("b", 8.0, 1, 0.80), _row("b", 8.0, 2, 0.96),
             _row("a", 16.0, 0, 0.90), _row("a", 16.0, 1, 0.92),
             _row("c", 16.0, 0, 0.99, interpolated=True)]  # no model of its own
    # level 8: a's mean 0.933 beats b's 0.913, a's median seed is 2; level 16: an even count
    # of seeds takes the lower middle
    assert best_per_level(rows) == [Choice(8.0, "a", 2, 0.93, pytest.approx(0.9333, abs=1e-4)),
                                    Choice(16.0, "a", 0, 0.90, pytest.approx(0.91))]


def test_screenshots_of_the_ui_over_a_copy_of_the_store(published, tmp_path):
    """docs/screenshots.py end to end where Chromium and Playwright are present: a real
    `mlflow server` on a copy of the store, five 1280 x 800 PNGs, the store untouched."""
    import importlib.util
    import subprocess
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from screenshots import SHOTS, chromium
    finally:
        sys.path.pop(0)
    if chromium() is None:
        pytest.skip("no Chromium (apt-get install chromium, or set CHROMIUM)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("no Playwright (pip install playwright; it drives the system Chromium)")
    root, _ = published
    store = root / "mlruns" / "mlflow.db"
    before = store.read_bytes()
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "screenshots.py"),
                          "--out", str(tmp_path)], cwd=root, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in SHOTS:
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert (width, height) == (1280, 800)
    assert store.read_bytes() == before  # the copy was served, not the store


def test_a_model_logged_before_the_layer_packages_still_loads(published, tmp_path):
    """Models logged before the move carry a code file that imports
    ``sparsebench.mlflow_model`` (then the module of `SparseCheckpointModel`): that path must
    keep loading them, with the same predictions."""
    import shutil

    import mlflow

    uri = f"models:/{registered_name('default', 8.0)}@{ALIAS}"
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "now")))
    old = tmp_path / "logged-before"
    shutil.copytree(local, old)
    code = [p for p in old.rglob("*.py") if "import SparseCheckpointModel" in p.read_text()]
    assert code, "the logged model carries its loading code"
    for path in code:
        text = path.read_text().replace("from sparsebench.tracking.models import",
                                        "from sparsebench.mlflow_model import")
        assert "from sparsebench.mlflow_model import SparseCheckpointModel" in text
        path.write_text(text)
    images = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    before = mlflow.pyfunc.load_model(str(old)).predict(images)
    assert np.array_equal(before, mlflow.pyfunc.load_model(str(local)).predict(images))


def test_registered_names_sort_in_level_order():
    levels = [8.0, 16.0, 32.0, 64.0, 71.2, 128.0, 246.0]
    names = [registered_name("default", level) for level in levels]
    assert names[0] == "sparsebench-default-008x-best"
    assert names[4] == "sparsebench-default-071.2x-best"
    assert sorted(names) == names
