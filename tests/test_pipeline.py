"""End to end: the CLI stages on a tiny synthetic data set in tmp_path, MLflow read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, small_params

from sparsebench.cli import main

pytestmark = pytest.mark.slow
METHODS = list(yaml.safe_load((ROOT / "params.yaml").read_text())["methods"])
TARGETED = ["magnitude", "gmp", "random", "admm", "admm_l1", "sas_admm"]


def _run_all(params):
    args = ["--params", str(params)]
    assert main(["prepare", *args]) == 0
    assert main(["pretrain", *args]) == 0
    for m in METHODS:
        for stage in ("prune", "retrain", "evaluate"):
            assert main([stage, *args, "--method", m]) == 0, (stage, m)
    assert main(["report", *args]) == 0


def test_stages_run_end_to_end_and_track_in_mlflow(workspace):
    from mlflow import MlflowClient

    params = small_params(workspace)
    _run_all(params)

    results = {m: {**json.loads((workspace / "metrics" / f"{m}.json").read_text()),
                   **json.loads((workspace / "evaluation" / f"{m}.json").read_text())}
               for m in METHODS}
    assert set(json.loads((workspace / "metrics" / "gmp.json").read_text())) == {
        "method", "params", "epochs", "mean", "std"}
    assert results["gmp"]["params"] == {"source": "default"}  # no tuned/gmp.yaml here
    assert results["dense"]["mean"]["sparsity"] == 0.0
    for m in TARGETED:
        assert results[m]["mean"]["sparsity"] == pytest.approx(0.95, abs=0.005)
        assert results[m]["mean"]["compression_ratio"] == pytest.approx(20, rel=0.05)
        assert results[m]["mean"]["theoretical_speedup"] > 10
        assert results[m]["mean"]["checkpoint_ratio"] > 3  # the sparse file is really smaller
        seed0 = workspace / "runs" / m / "eval" / "seed0" / "model.sparse.safetensors"
        assert seed0.stat().st_size == results[m]["seeds"]["0"]["checkpoint_bytes"]
    assert results["gmp"]["epochs"] == {"pretrain": 2, "prune": 2, "retrain": 1, "total": 5}
    assert results["dense"]["epochs"] == {"pretrain": 2, "prune": 0, "retrain": 0, "total": 2}
    assert set(results["gmp"]["seeds"]) == {"0", "1"}

    table = (workspace / "reports" / "summary.md").read_text()
    for m in METHODS:
        assert f"| {m} |" in table
    assert (workspace / "reports" / "summary.csv").read_text().count("\n") == 1 + len(METHODS)
    for plot in ("accuracy_vs_sparsity", "val_accuracy", "sparsity", "layer_sparsity"):
        assert (workspace / "reports" / "plots" / f"{plot}.png").stat().st_size > 1000

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sparsebench-default")
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_stage LIKE 'evaluate@%'")
    assert sorted((r.data.tags["method"], r.data.tags["seed"]) for r in runs) == sorted(
        (m, s) for m in METHODS for s in ("0", "1"))
    gmp0 = next(r for r in runs if r.data.tags["method"] == "gmp" and r.data.tags["seed"] == "0")
    assert gmp0.info.status == "FINISHED"
    assert gmp0.data.metrics["test_accuracy"] == pytest.approx(
        results["gmp"]["seeds"]["0"]["test_accuracy"])
    assert gmp0.data.params["method.target_sparsity"] == "0.95"
    assert {"git_commit", "suite"} <= set(gmp0.data.tags)
    history = client.get_metric_history(gmp0.info.run_id, "prune/sparsity")
    assert [m.step for m in history] == [1, 2]
    assert len(client.get_metric_history(gmp0.info.run_id, "pretrain/val_accuracy")) == 2
    artifacts = [a.path for a in client.list_artifacts(gmp0.info.run_id, "masks")]
    assert artifacts == ["masks/masks.safetensors"]
    artifacts = [a.path for a in client.list_artifacts(gmp0.info.run_id, "model")]
    assert artifacts == ["model/model.sparse.safetensors"]
    for key in ("checkpoint_bytes", "checkpoint_ratio", "checkpoint_bound_ratio",
                "latency_b1_ratio", "latency_b256_ratio"):
        assert key in gmp0.data.metrics
    report_runs = client.search_runs([experiment.experiment_id], "tags.dvc_stage = 'report'")
    assert len(report_runs) == 1


def test_masked_entries_are_zero_in_every_saved_model(workspace):
    from sparsebench.checkpoint import load_model
    from sparsebench.sparsity import load_masks

    params = small_params(workspace, tracking={"enabled": False})
    args = ["--params", str(params)]
    for stage in ("prepare", "pretrain"):
        assert main([stage, *args]) == 0
    for stage in ("prune", "retrain"):
        assert main([stage, *args, "--method", "gmp"]) == 0
    for seed in (0, 1):
        model, _ = load_model(workspace / f"runs/gmp/retrain/seed{seed}/model.safetensors")
        masks = load_masks(workspace / f"runs/gmp/retrain/seed{seed}/masks.safetensors")
        assert masks
        for name, mask in masks.items():
            assert (model.get_submodule(name).weight[~mask] == 0).all()
    assert not (workspace / "mlruns").exists()


def _cli(*args, cwd):
    env = {**os.environ, "SPARSEBENCH_ROOT": str(cwd)}
    return subprocess.run([sys.executable, "-m", "sparsebench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("edit, expected", [
    ({"methods": {"lottery": {}}},
     "methods.lottery: unknown name 'lottery'; allowed: adabreg, admm, admm_l1, dense"),
    ({"model": {"name": "vgg"}}, "model.name: unknown name 'vgg'; allowed: "),
    ({"data": {"dataset": "imagenet"}}, "data.dataset: unknown name 'imagenet'; allowed: "),
    ({"methods": {"gmp": {"target_sparsity": 1.0}}},
     "methods.gmp.target_sparsity: 1.0 is not allowed; input should be less than 1"),
    ({"methods": {"magnitude": {"target_sparsity": -0.1}}},
     "methods.magnitude.target_sparsity: -0.1 is not allowed; input should be greater than or"),
    ({"pretrain": {"epochs": 2, "optimzer": {}}},
     "pretrain.optimzer: unknown key; did you mean optimizer?"),
    ({"seeds": []}, "seeds: [] is not allowed"),
])
def test_bad_params_get_one_line_and_exit_2(workspace, edit, expected):
    path = small_params(workspace, **edit)
    result = _cli("pretrain", "--params", str(path), cwd=workspace)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert expected in result.stderr
    assert not (workspace / "runs").exists()


def test_malformed_yaml_is_refused(workspace):
    (workspace / "params.yaml").write_text("seeds: [0, 1\nmodel: {")
    result = _cli("pretrain", cwd=workspace)
    assert result.returncode == 2
    assert "params: 'params.yaml' is not valid YAML at line" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_params_file_is_refused(workspace):
    result = _cli("prepare", "--params", "nope.yaml", cwd=workspace)
    assert result.returncode == 2 and "params: 'nope.yaml' does not exist" in result.stderr


def test_unknown_method_flag_is_refused(workspace):
    path = small_params(workspace)
    result = _cli("prune", "--params", str(path), "--method", "lottery", cwd=workspace)
    assert result.returncode == 2
    allowed = ", ".join(sorted(METHODS))  # small_params writes the keys sorted
    assert f"--method: unknown method key 'lottery'; allowed: {allowed}" in result.stderr


def test_missing_data_dir_is_refused_and_earlier_output_kept(workspace):
    path = small_params(workspace)
    assert main(["prepare", "--params", str(path)]) == 0
    before = (workspace / "data/prepared/splits.safetensors").read_bytes()
    params = yaml.safe_load(path.read_text())
    params["data"].update(dataset="mnist", dir=str(workspace / "nowhere"))
    path.write_text(yaml.safe_dump(params))
    result = _cli("prepare", "--params", str(path), cwd=workspace)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.dir:" in result.stderr and "nowhere" in result.stderr
    assert (workspace / "data/prepared/splits.safetensors").read_bytes() == before


def test_failed_stage_keeps_previous_outputs(workspace):
    path = small_params(workspace, tracking={"enabled": False})
    for stage in ("prepare", "pretrain"):
        assert main([stage, "--params", str(path)]) == 0
    before = (workspace / "runs/pretrain/seed0/model.safetensors").read_bytes()
    params = yaml.safe_load(path.read_text())
    params["pretrain"]["optimizer"]["lr"] = 1e30  # diverges
    path.write_text(yaml.safe_dump(params))
    result = _cli("pretrain", "--params", str(path), cwd=workspace)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    for part in ("pretrain seed 0: diverged", "nan at epoch 1", "optimizer.lr=1e+30"):
        assert part in result.stderr
    assert (workspace / "runs/pretrain/seed0/model.safetensors").read_bytes() == before
    assert sorted(p.name for p in (workspace / "runs").iterdir()
                  if not p.name.startswith(".")) == ["pretrain"]


def test_wrong_checksum_in_data_dir_is_refused_and_earlier_output_kept(workspace):
    path = small_params(workspace)
    assert main(["prepare", "--params", str(path)]) == 0
    before = (workspace / "data/prepared/splits.safetensors").read_bytes()
    source = workspace / "mnist-files"
    source.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (source / name).write_bytes(b"not the real file")
    params = yaml.safe_load(path.read_text())
    params["data"].update(dataset="mnist", dir=str(source))
    path.write_text(yaml.safe_dump(params))
    result = _cli("prepare", "--params", str(path), cwd=workspace)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "data.dir:" in result.stderr and "sha256" in result.stderr.lower()
    assert (workspace / "data/prepared/splits.safetensors").read_bytes() == before
    assert not list((workspace / ".cache").rglob("*-ubyte"))


def test_parallel_writers_on_a_fresh_mlflow_store(workspace):
    """Two processes creating the SQLite store at once both succeed (the store is locked)."""
    code = ("from sparsebench.tracking import log_run, tracking_uri; import sys; "
            "log_run(tracking_uri(), 'race', run_name=sys.argv[1], tags={}, params={}, "
            "metrics={'x': 1.0}, curves={'s': [{'epoch': 1, 'v': 0.5}]})")
    env = {**os.environ, "SPARSEBENCH_ROOT": str(workspace)}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", code, f"w{i}"], cwd=workspace, env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("race")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["w0", "w1"]
    assert all(r.info.status == "FINISHED" for r in runs)
