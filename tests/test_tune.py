"""``sparsebench tune`` on a real SQLite study database and a real MLflow store, in a tmp
workspace with tiny synthetic data: trials, constraints, resume, MLflow runs, bad input."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import optuna
import pytest
import yaml

from sparsebench.pipeline.cli import main

pytestmark = pytest.mark.slow
STUDY = "default-gmp-accuracy_at_sparsity"


def _db(path=None):
    from sparsebench.util.paths import repo_root

    return f"sqlite:///{path or repo_root() / 'tuning' / 'optuna.db'}"


def _study(name=STUDY, url=None):
    return optuna.load_study(study_name=name, storage=url or _db())


def _mlflow():
    from mlflow import MlflowClient

    from sparsebench.tracking.runs import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri())
    experiment = client.get_experiment_by_name("sparsebench-default-tune")
    return client, experiment.experiment_id


def _children(client, experiment_id, parent_id):
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_a_study_runs_n_trials_from_the_hand_set_values_tracks_and_resumes(
        tune_workspace, monkeypatch):
    import sparsebench.tuning.worker

    seen = []
    real = sparsebench.tuning.worker.load_splits
    monkeypatch.setattr(sparsebench.tuning.worker, "load_splits",
                        lambda path, names=("train", "val"): seen.append(tuple(names))
                        or real(path, names))
    params = tune_workspace()
    assert main(["tune", "--params", str(params), "--method", "gmp"]) == 0
    assert seen == [("train", "val")]  # the test split is never loaded while tuning

    study = _study()
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE"] * 4
    first = study.trials[0]
    assert first.params == {"optimizer.lr": 0.02} and first.user_attrs["handset"]
    for t in study.trials:  # the constraint: sparsity >= 0.95 is feasible
        assert (t.user_attrs["sparsity"] >= 0.95 - 1e-4) == (
            t.system_attrs["constraints:sparsity"] <= 0)
    best = study.best_trial
    assert best.user_attrs["sparsity"] >= 0.95 - 1e-4

    tuned = yaml.safe_load(Path("tuned/gmp.yaml").read_text())
    assert tuned["params"] == best.params and tuned["best"]["trial"] == best.number
    assert tuned["handset"]["trial"] == 0 and tuned["finished_trials"] == 4
    rows = Path("tuning/gmp/trials.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,state,val_accuracy,sparsity,feasible")
    for plot in ("pareto.png", "history.png"):
        assert Path("tuning/gmp", plot).read_bytes()[:4] == b"\x89PNG"

    client, experiment_id = _mlflow()
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.study"] == STUDY
    assert parent.data.metrics["finished_trials"] == 4
    assert {a.path for a in client.list_artifacts(parent_id, "tuning")} == {
        "tuning/trials.csv", "tuning/pareto.png", "tuning/history.png"}
    children = _children(client, experiment_id, parent_id)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2, 3]
    run0 = next(r for r in children if r.data.tags["optuna.trial"] == "0")
    assert run0.info.status == "FINISHED" and run0.data.params["optimizer.lr"] == "0.02"
    assert run0.data.metrics["val_accuracy"] == pytest.approx(first.user_attrs["val_accuracy"])
    assert len(client.get_metric_history(run0.info.run_id, "prune/val_accuracy")) == 2

    # Resumed: only the missing trials run, under the same MLflow parent run.
    assert main(["tune", "--params", str(params), "--method", "gmp", "--trials", "6"]) == 0
    study = _study()
    assert [t.state.name for t in study.trials].count("COMPLETE") == 6
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id
    assert len(_children(client, experiment_id, parent_id)) == 6


def test_the_hand_set_trial_reproduces_the_pipeline_on_the_validation_split(tune_workspace):
    params = tune_workspace(trials=1, tracking=False)
    raw = yaml.safe_load(params.read_text())
    raw["levels"]["compression"] = [20]  # the study's level: tune.target_sparsity 0.95
    params.write_text(yaml.safe_dump(raw))
    assert main(["run", "--params", str(params), "--method", "gmp"]) == 0
    assert main(["tune", "--params", str(params), "--method", "gmp"]) == 0
    trial0 = _study().trials[0]
    curves = json.loads(Path("runs/gmp/c20/seed0/curves.json").read_text())["retrain"]
    assert trial0.user_attrs["val_loss"] == pytest.approx(curves[-1]["val_loss"], rel=1e-6)
    assert trial0.user_attrs["val_accuracy"] == curves[-1]["val_accuracy"]

    # The pipeline now reads tuned/gmp.yaml, and says so beside the test figures.
    assert main(["run", "--params", str(params), "--method", "gmp"]) == 0
    source = json.loads(Path("evaluation/gmp.json").read_text())["params"]
    assert source["source"] == "tuned" and source["study"] == STUDY
    assert source["values"] == {"optimizer.lr": 0.02} and source["trials"] == 1
    assert source["handset_val_accuracy"] == trial0.user_attrs["val_accuracy"]


def test_a_diverging_trial_fails_and_the_study_goes_on(tune_workspace, capsys):
    params = tune_workspace(methods={"gmp": {"optimizer": {"lr": 1e30}}}, trials=3,
                            spaces={"gmp": {"optimizer.lr": {"low": 0.001, "high": 0.01}}})
    assert main(["tune", "--params", str(params), "--method", "gmp"]) == 0
    trials = _study().trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert "training loss is nan" in trials[0].user_attrs["error"]
    client, experiment_id = _mlflow()
    children = _children(client, experiment_id, _study().user_attrs["mlflow_parent_run_id"])
    status = {r.data.tags["optuna.trial"]: r.info.status for r in children}
    assert status == {"0": "FAILED", "1": "FINISHED", "2": "FINISHED", "3": "FINISHED"}
    assert "tune gmp trial 0: FAIL" in capsys.readouterr().out


def test_the_pareto_objective_maximises_accuracy_and_sparsity(tune_workspace):
    params = tune_workspace(trials=3, tracking=False)
    assert main(["tune", "--params", str(params), "--method", "gmp",
                 "--objective", "pareto"]) == 0
    study = _study("default-gmp-pareto")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert all(len(t.values) == 2 for t in study.trials)
    tuned = yaml.safe_load(Path("tuned/gmp.yaml").read_text())
    assert tuned["objective"] == "pareto" and tuned["best"]["sparsity"] >= 0.95 - 1e-4
    assert main(["tune-report", "--params", str(params)]) == 0
    fronts = json.loads(Path("reports/tuning/pareto_all.json").read_text())
    assert list(fronts) == ["gmp"] and fronts["gmp"]
    assert Path("reports/tuning/pareto_all.png").read_bytes()[:4] == b"\x89PNG"


def test_two_workers_finish_exactly_n_trials_and_n_nested_runs(tune_workspace, capfd):
    params = tune_workspace(trials=5)
    assert main(["tune", "--params", str(params), "--method", "gmp", "--workers", "2"]) == 0
    study = _study()
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    workers = {t.user_attrs["worker_pid"] for t in study.trials}
    assert len(workers) == 2  # both processes ran trials
    client, experiment_id = _mlflow()
    children = _children(client, experiment_id, study.user_attrs["mlflow_parent_run_id"])
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2, 3, 4]
    out = capfd.readouterr().out
    assert "worker 0: stopped (done)" in out and "worker 1: stopped (done)" in out


# Bad input: one line on stderr, exit 2, nothing written, an existing study untouched.

def _refused(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["--method", "lottery"], "--method: unknown method key 'lottery'; allowed: "),
    (["--method", "dense"],
     "--method: 'dense' has no search space under tune.spaces; allowed: gmp"),
    (["--method", "gmp", "--trials", "0"], "--trials: 0 is not allowed; allowed: an integer >= 1"),
    (["--method", "gmp", "--objective", "best"], "arguments: argument --objective: invalid choice"),
    (["--method", "gmp", "--storage", "not a url"], "--storage: 'not a url' is not a database URL"),
    (["--method", "gmp", "--storage", "sqlite:////nowhere/optuna.db"],
     "--storage: 'sqlite:////nowhere/optuna.db': the folder '/nowhere' does not exist"),
])
def test_bad_arguments_are_refused_in_one_line(tune_workspace, capsys, argv, expected):
    params = tune_workspace()
    _refused(capsys, ["tune", "--params", str(params), *argv], expected)


def test_an_inverted_range_is_refused_before_anything_is_written(tune_workspace, capsys):
    params = tune_workspace(spaces={"gmp": {"target_sparsity": {"low": 0.99, "high": 0.9}}})
    _refused(capsys, ["tune", "--params", str(params), "--method", "gmp"],
             "tune.spaces.gmp.target_sparsity: "
             "low 0.99 >= high 0.9 is an empty or inverted range; allowed: low < high")
    import os

    assert not os.path.exists("tuning") and not os.path.exists("tuned")


def test_a_missing_pretrained_model_is_refused(tune_workspace, capsys):
    import shutil

    params = tune_workspace()
    shutil.rmtree("runs/pretrain")
    _refused(capsys, ["tune", "--params", str(params), "--method", "gmp"],
             "input: 'runs/pretrain/seed0/model.safetensors' does not exist; methods.gmp starts "
             "from the suite's pretrained model, which tune does not train")


def test_an_unreachable_storage_is_refused_within_ten_seconds(tune_workspace, capsys):
    params = tune_workspace()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens here: refused at once
    _refused(capsys, ["tune", "--params", str(params), "--method", "gmp", "--storage",
                      f"postgresql://u:secret@127.0.0.1:{port}/db"],
             f"--storage: cannot reach 'postgresql://u:***@127.0.0.1:{port}/db' (")
    with socket.socket() as silent:  # accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://u@127.0.0.1:{silent.getsockname()[1]}/db"
        start = time.perf_counter()
        _refused(capsys, ["tune", "--params", str(params), "--method", "gmp", "--storage", url],
                 "--storage: ")
        assert time.perf_counter() - start < 10


def test_a_study_name_taken_by_another_objective_is_refused_and_left_untouched(
        tune_workspace, capsys):
    params = tune_workspace(trials=1, tracking=False)
    assert main(["tune", "--params", str(params), "--method", "gmp"]) == 0
    db = Path("tuning/optuna.db").read_bytes()
    capsys.readouterr()
    _refused(capsys, ["tune", "--params", str(params), "--method", "gmp", "--objective",
                      "pareto", "--study", STUDY],
             f"--study: '{STUDY}' exists in 'sqlite:///")
    assert Path("tuning/optuna.db").read_bytes() == db
    assert len(_study().trials) == 1
