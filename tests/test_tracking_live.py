"""Live MLflow runs on the SQLite store: the epochs are in the store while the run trains, a
killed stage continues its MLflow runs (same run ids, every epoch once), a run's duration is its
wall time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import seed_store, small_params

from sparsebench.pipeline.cli import main

pytestmark = pytest.mark.slow


def test_a_live_run_shows_each_epoch_before_it_ends(tracked_workspace):
    from sparsebench.tracking.runs import LiveRun, Records, RunInfo, client_for, tracking_uri

    uri = tracking_uri()
    client, experiment = client_for(uri, "live")
    live = LiveRun(RunInfo(uri, experiment, "r", {"fingerprint": "f1"}, {"lr": 0.1})).start()
    rows = [{"epoch": e, "train_loss": 1.0 / e, "rho": 0.01 * e, "seconds": 0.1}
            for e in (1, 2)]
    live.epoch("prune", rows[0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the first epoch arrives while the run is open
        found = client.search_runs([experiment], "tags.fingerprint = 'f1'")
        if found and "prune/rho" in found[0].data.metrics:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the first epoch never reached the store")
    assert found[0].info.status == "RUNNING"
    live.epoch("prune", rows[1])
    time.sleep(0.5)
    assert live.finish(Records({"prune": rows}, {"test_accuracy": 0.9})) is None
    run = client.get_run(found[0].info.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time >= run.info.start_time
    assert [m.step for m in client.get_metric_history(run.info.run_id, "prune/rho")] == [1, 2]
    assert run.data.metrics["test_accuracy"] == 0.9 and run.data.params == {"lr": "0.1"}
    again = LiveRun(RunInfo(uri, experiment, "r", {"fingerprint": "f1"}, {})).start()
    assert again.finish(None) is None and again.skipped  # logged whole already: not again
    assert len(client.search_runs([experiment], "")) == 1


def _admm_workspace(root: Path) -> Path:
    path = small_params(root, tracking={"enabled": True})
    params = yaml.safe_load(path.read_text())
    params["data"]["limit"] = 12000  # epochs long enough to be killed in the middle, even
    # on an idle machine (at 3,000 samples both runs ended within the second the test waits)
    params["levels"]["compression"] = [8]
    params["execution"] = {"threads": 1, "workers": 2}
    params["budget"] = None
    params["methods"] = {"admm": {"iterations": 3, "epochs_per_iteration": 2, "rho": 0.01,
                                  "rho_growth": 2.0, "batch_size": 32}}
    params["tune"]["spaces"] = {}
    path.write_text(yaml.safe_dump(params))
    return path


def test_a_killed_stage_continues_its_mlflow_runs(tracked_workspace, capsys):
    workspace = tracked_workspace
    from mlflow import MlflowClient

    from sparsebench.tracking.runs import client_for, tracking_uri

    _admm_workspace(workspace)
    for stage in ("prepare", "pretrain"):
        assert main([stage]) == 0
    env = {**os.environ, "SPARSEBENCH_ROOT": str(workspace)}
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", "run", "--method", "admm"],
                            cwd=workspace, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    seen = 0
    for line in proc.stdout:  # each seed's first ADMM iteration is logged: kill the stage
        seen += line.startswith("prune admm c8 seed")
        if seen == 2:
            time.sleep(1.0)  # the rows reach the store (a background thread sends them)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the stage ended before it could be killed"
    states = sorted((workspace / "runs" / "admm" / "c8").glob(".seed*.work/mlflow_run.json"))
    assert len(states) == 2, "no live run id kept for the resume"
    ids = {json.loads(p.read_text())["run_id"] for p in states}
    client, experiment = client_for(tracking_uri(), "sparsebench-default")
    before = {r.info.run_id: r for r in client.search_runs([experiment],
                                                            "tags.run_kind = 'seed'")}
    assert set(before) == ids and {r.info.status for r in before.values()} == {"RUNNING"}

    assert main(["run", "--method", "admm"]) == 0
    runs = MlflowClient(tracking_uri()).search_runs([experiment], "tags.run_kind = 'seed'")
    assert {r.info.run_id for r in runs} == ids  # the same runs, continued
    for run in runs:
        assert run.info.status == "FINISHED"
        curves = json.loads((workspace / "runs" / "admm" / "c8" / f"seed{run.data.tags['seed']}"
                             / "curves.json").read_text())
        for phase, rows in curves.items():  # every epoch once, ADMM's own figures among them
            for name in ("val_accuracy", "rho", "primal_residual") if phase == "prune" else (
                    "val_accuracy",):
                steps = [m.step for m in client.get_metric_history(run.info.run_id,
                                                                   f"{phase}/{name}")]
                assert sorted(steps) == [r["epoch"] for r in rows], (phase, name)
        result = json.loads((workspace / "runs" / "admm" / "c8" / f"seed{run.data.tags['seed']}"
                             / "result.json").read_text())
        # from its first start to the end of its evaluation: at least the rerun's own seconds
        assert (run.info.end_time - run.info.start_time) / 1000 >= result["seconds"]["run"] - 0.5


def _log_at_once(uri: str, experiment_id: str, dataset, barrier, results, i: int) -> None:
    from mlflow import MlflowClient

    from sparsebench.tracking.runs import log_dataset

    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(experiment_id, run_name=f"run {i}").info.run_id
    barrier.wait()
    try:
        log_dataset(client, run_id, dataset)
        results.put((i, run_id))
    except Exception as exc:  # the failure is the test's message
        results.put((i, f"failed: {type(exc).__name__}: {str(exc)[:200]}"))


def test_runs_side_by_side_all_log_their_data_set(tmp_path, monkeypatch, store_template):
    """Three workers log the same data set to their runs at the same instant, in a fresh
    SQLite experiment: every run gets it (with one try, as `client.log_inputs` alone, two of the
    three fail on the store's unique constraint nearly every time: the pretrain stage's
    second worker lost its live run that way)."""
    import multiprocessing as mp

    from mlflow.entities import Dataset, DatasetInput, InputTag

    from sparsebench.tracking.runs import client_for

    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    uri = f"sqlite:///{seed_store(store_template, tmp_path / 'mlflow.db')}"
    client, experiment_id = client_for(uri, "race")  # a new experiment: no data set in it
    dataset = DatasetInput(Dataset(name="synthetic", digest="0" * 32, source_type="local",
                                   source="{}"), tags=[InputTag("mlflow.data.context",
                                                                "training")])
    context = mp.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()
    workers = [context.Process(target=_log_at_once,
                               args=(uri, experiment_id, dataset, barrier, results, i))
               for i in range(3)]
    for w in workers:
        w.start()
    logged = dict(results.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    assert not any(v.startswith("failed") for v in logged.values()), logged
    for run_id in logged.values():
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [("synthetic", "0" * 32)]


def test_a_data_set_refused_for_another_reason_is_not_sent_twice(tmp_path, monkeypatch,
                                                                  store_template):
    """Only the unique-constraint race is tried again: logging to a deleted run fails at once,
    with MLflow's own error, after one request."""
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput
    from mlflow.exceptions import MlflowException

    from sparsebench.tracking.runs import client_for, log_dataset

    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    uri = f"sqlite:///{seed_store(store_template, tmp_path / 'mlflow.db')}"
    _, experiment_id = client_for(uri, "deleted")

    class Counting(MlflowClient):
        calls = 0

        def log_inputs(self, *args, **kwargs):
            Counting.calls += 1
            return super().log_inputs(*args, **kwargs)

    client = Counting(tracking_uri=uri)
    run_id = client.create_run(experiment_id).info.run_id
    client.delete_run(run_id)
    dataset = DatasetInput(Dataset(name="synthetic", digest="1" * 32, source_type="local",
                                   source="{}"))
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        log_dataset(client, run_id, dataset)
    assert Counting.calls == 1
    assert client.get_run(run_id).inputs.dataset_inputs == []


def test_an_experiment_is_of_the_model_training_kind(tmp_path, monkeypatch, store_template):
    """MLflow 3's UI opens an experiment of no kind on its GenAI traces view: every experiment
    sparsebench makes, or finds without the tag, is tagged a model-training experiment."""
    from mlflow import MlflowClient

    from sparsebench.tracking.runs import KIND, KIND_TAG, client_for

    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    uri = f"sqlite:///{seed_store(store_template, tmp_path / 'mlflow.db')}"
    client, made = client_for(uri, "made")
    assert client.get_experiment(made).tags[KIND_TAG] == KIND == "custom_model_development"
    old = MlflowClient(uri).create_experiment("old")  # as a store made before the tag
    assert KIND_TAG not in MlflowClient(uri).get_experiment(old).tags
    _, found = client_for(uri, "old")
    assert found == old and client.get_experiment(old).tags[KIND_TAG] == KIND


def test_the_comparison_view_leaves_out_the_outliers():
    from sparsebench.tracking.runs import comparison_view_state

    assert comparison_view_state()["searchFilter"] == "tags.run_kind = 'parent'"
    state = comparison_view_state(["random", "x"])
    assert state["searchFilter"] == ("tags.run_kind = 'parent' and tags.method != 'random' "
                                     "and tags.method != 'x'")
    assert "metrics.`test_accuracy_mean`" in state["selectedColumns"]  # the table's columns
    chart = state["compareRunCharts"][0]
    assert (chart["type"], chart["xaxis"]["key"], chart["yaxis"]["key"]) == (
        "SCATTER", "log2_compression", "test_accuracy_mean")
