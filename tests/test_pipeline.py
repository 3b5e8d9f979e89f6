"""End to end: the CLI stages on a tiny synthetic data set in tmp_path, MLflow read back."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, small_params, write_calibration

from sparsebench.pipeline.cli import main
from sparsebench.report.tables import method_colour

pytestmark = pytest.mark.slow
METHODS = list(yaml.safe_load((ROOT / "params.yaml").read_text())["methods"])
TARGETED = ["magnitude", "gmp", "random", "admm", "admm_l1", "sas_admm"]


def _run_all(params, root):
    args = ["--params", str(params)]
    assert main(["prepare", *args]) == 0
    assert main(["pretrain", *args]) == 0
    for m in METHODS:
        if m in REGULARISED:
            write_calibration(root, params, m, REGULARISED[m])
        assert main(["run", *args, "--method", m]) == 0, m
    assert main(["report", *args]) == 0


REGULARISED = {"grda": 0.01, "linbreg": 0.05, "adabreg": 0.5, "proxsgd": 1e-4}


def test_stages_run_end_to_end_and_track_in_mlflow(tracked_workspace):
    workspace = tracked_workspace
    from mlflow import MlflowClient

    params = small_params(workspace)
    raw = yaml.safe_load(params.read_text())
    raw["levels"]["compression"] = [8, 32]
    raw["budget"] = None
    params.write_text(yaml.safe_dump(raw))
    _run_all(params, workspace)

    results = {m: json.loads((workspace / "evaluation" / f"{m}.json").read_text())
               for m in METHODS}
    assert set(results["gmp"]) == {"method", "params", "levels", "runs"}
    assert results["gmp"]["params"] == {"source": "default"}  # no tuned/gmp.yaml here
    assert results["grda"]["params"]["calibrated"] == "calibrated/grda.yaml"
    assert list(results["dense"]["levels"]) == ["dense"]
    assert results["dense"]["levels"]["dense"]["mean"]["sparsity"] == 0.0
    for m in TARGETED:
        assert list(results[m]["levels"]) == ["c8", "c32"]
        for name, level in (("c8", 8), ("c32", 32)):
            mean = results[m]["levels"][name]["mean"]
            assert mean["compression"] == pytest.approx(level, rel=0.01), (m, name)
            assert mean["sparsity"] == pytest.approx(1 - 1 / level, abs=0.001)
            assert mean["flop_speedup"] > level / 2
            seed0 = workspace / "runs" / m / name / "seed0" / "model.sparse.safetensors"
            run0 = next(r for r in results[m]["runs"] if r["seed"] == 0 and r["level"] == level)
            assert seed0.stat().st_size == run0["figures"]["checkpoint_bytes"]
    # metrics/<m>.json, the table of `dvc metrics show`: the mean test accuracy of each level's
    # two seeds, one column a level
    for m in METHODS:
        accuracy = {}
        for run in results[m]["runs"]:
            name = "dense" if run["level"] is None else f"c{run['level']:03.0f}"
            accuracy.setdefault(name, []).append(run["figures"]["test_accuracy"])
        assert {k: len(v) for k, v in accuracy.items()} == (
            {"dense": 2} if m == "dense" else {"c008": 2, "c032": 2}), m
        shown = json.loads((workspace / "metrics" / f"{m}.json").read_text())
        assert shown == pytest.approx({k: (a + b) / 2 for k, (a, b) in accuracy.items()}), m
    gmp8 = results["gmp"]["levels"]["c8"]
    assert gmp8["epochs"] == {"pretrain": 2, "prune": 2, "retrain": 4, "total": 8}
    assert gmp8["seeds"] == 2
    assert results["grda"]["levels"]["c8"]["epochs"]["pretrain"] == 0

    rows = list(csv.DictReader((workspace / "reports" / "curves.csv").open()))
    assert len(rows) == 2 + (len(METHODS) - 1) * 2 * 2  # dense, then methods x levels x seeds
    for row in rows:  # the table's numbers are the runs' own
        if row["method"] == "dense":
            continue
        run = next(r for r in json.loads((workspace / "evaluation" / f"{row['method']}.json")
                                         .read_text())["runs"]
                   if r["seed"] == int(row["seed"]) and r["level"] == float(row["level"]))
        assert float(row["test_accuracy"]) == run["figures"]["test_accuracy"]
        assert float(row["compression"]) == run["figures"]["compression"]
    table = (workspace / "reports" / "curves.md").read_text()
    assert "Dense (no pruning): test accuracy" in table
    for m in (m for m in METHODS if m != "dense"):
        assert f"| {m} |" in table
    assert (workspace / "reports" / "plots" / "accuracy_vs_compression.png").stat().st_size > 1000

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sparsebench-default")
    children = client.search_runs([experiment.experiment_id], "tags.run_kind = 'seed'")
    parents = client.search_runs([experiment.experiment_id], "tags.run_kind = 'parent'")
    assert len(children) == len(rows)
    assert len(parents) == 1 + (len(METHODS) - 1) * 2
    by_id = {p.info.run_id: p for p in parents}
    gmp0 = next(r for r in children if r.data.tags["method"] == "gmp"
                and r.data.tags["seed"] == "0" and r.data.tags["level_name"] == "c8")
    parent = by_id[gmp0.data.tags["mlflow.parentRunId"]]
    assert parent.data.tags["level_name"] == "c8" and parent.data.tags["method"] == "gmp"
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(
        results["gmp"]["levels"]["c8"]["mean"]["test_accuracy"])
    assert parent.data.metrics["log2_compression"] == pytest.approx(
        math.log2(results["gmp"]["levels"]["c8"]["mean"]["compression"]))
    assert gmp0.info.status == "FINISHED"
    assert gmp0.data.params["method.target_sparsity"] == "0.875"
    assert {"git_commit", "suite", "level", "fingerprint"} <= set(gmp0.data.tags)
    grda = next(r for r in children if r.data.tags["method"] == "grda")
    assert (gmp0.data.tags["params_source"], grda.data.tags["params_source"]) == (
        "default", "calibrated")
    history = client.get_metric_history(gmp0.info.run_id, "prune/sparsity")
    assert [m.step for m in history] == [1, 2]
    artifacts = [a.path for a in client.list_artifacts(gmp0.info.run_id, "model")]
    assert artifacts == ["model/model.sparse.safetensors"]
    report_runs = client.search_runs([experiment.experiment_id], "tags.dvc_stage = 'report'")
    assert len(report_runs) == 1
    # the UI's comparison: the plot at the report run's artifact root, each parent in its
    # method's plot colour, and the saved view of the parents' scatter
    assert "accuracy_vs_compression.png" in {
        a.path for a in client.list_artifacts(report_runs[0].info.run_id)}
    keys = list(yaml.safe_load(params.read_text())["methods"])
    colours = {p.data.tags["method"]: p.data.tags["mlflow.runColor"] for p in parents}
    assert colours == {k: method_colour(k, keys) for k in colours}
    assert colours["dense"] == "#000000" and len(set(colours.values())) == len(colours)
    view = json.loads(experiment.tags["mlflow.sharedViewState.sparsebench-comparison"])
    chart = json.loads(view["state"])["compareRunCharts"][0]
    assert chart["type"] == "SCATTER" and chart["xaxis"]["key"] in parent.data.metrics
    assert chart["yaxis"]["key"] in parent.data.metrics
    search = json.loads(view["state"])["searchFilter"]
    assert search.startswith("tags.run_kind = 'parent'")
    shown = client.search_runs([experiment.experiment_id], search)  # a filter MLflow takes
    assert {r.info.run_id for r in shown} <= set(by_id) and shown
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    assert main(["run", "--params", str(params), "--method", "gmp"]) == 0  # all cached
    assert len(client.search_runs([experiment.experiment_id], "tags.run_kind = 'seed'")) == \
        len(children)  # nothing logged twice


def test_masked_entries_are_zero_in_every_saved_model(workspace):
    from sparsebench.checkpoint import load_model
    from sparsebench.core.sparsity import load_masks

    params = small_params(workspace, tracking={"enabled": False})
    args = ["--params", str(params)]
    for stage in ("prepare", "pretrain"):
        assert main([stage, *args]) == 0
    assert main(["run", *args, "--method", "gmp"]) == 0
    for seed in (0, 1):
        for level in ("c8", "c128"):
            model, _ = load_model(workspace / f"runs/gmp/{level}/seed{seed}/model.safetensors")
            masks = load_masks(workspace / f"runs/gmp/{level}/seed{seed}/masks.safetensors")
            assert masks
            for name, mask in masks.items():
                assert (model.get_submodule(name).weight[~mask] == 0).all()
    assert not (workspace / "mlruns").exists()


def _cli(*args, cwd):
    env = {**os.environ, "SPARSEBENCH_ROOT": str(cwd)}
    return subprocess.run([sys.executable, "-m", "sparsebench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("edit, expected", [
    ({"methods": {"lottery": {}}},
     "methods.lottery: unknown name 'lottery'; allowed: adabreg, admm, admm_l1, dense"),
    ({"model": {"name": "vgg"}}, "model.name: unknown name 'vgg'; allowed: "),
    ({"data": {"dataset": "cifar100"}}, "data.dataset: unknown name 'cifar100'; allowed: "),
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
    result = _cli("run", "--params", str(path), "--method", "lottery", cwd=workspace)
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
    for part in ("pretrain seed 0: diverged", "pretrain seed 1: diverged", "nan at epoch 1",
                 "optimizer.lr=1e+30"):
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
    code = ("from sparsebench.tracking.runs import log_run, tracking_uri; import sys; "
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
