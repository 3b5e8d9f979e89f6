"""``sparsebench tune`` on a real SQLite study database and a real MLflow store, in a tmp
workspace with tiny synthetic data: trials, constraints, resume, MLflow runs, bad input."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
import yaml

from sparsebench.pipeline.cli import main

pytestmark = pytest.mark.slow
STUDY = "default-gmp-accuracy_at_sparsity"
# The tiny data are so easy that every learning rate of the space reaches val_accuracy 1 at the
# target, and a tie goes to the earliest trial: the hand-set one (trial 0), whose values are
# those in use, so nothing would be written. A hand-set rate this large wrecks the model (about
# 0.33, the retrain does not bring it back), so that another trial wins.
BAD_LR = 1000.0
UNCHANGED = ("; the chosen values are those in use (tuned/gmp.yaml or params.yaml): "
             "nothing written")


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
        tune_workspace, monkeypatch, capsys):
    import sparsebench.tuning.worker

    seen = []
    real = sparsebench.tuning.worker.load_splits
    monkeypatch.setattr(sparsebench.tuning.worker, "load_splits",
                        lambda path, names=("train", "val"): seen.append(tuple(names))
                        or real(path, names))
    params = tune_workspace(methods={"gmp": {"optimizer": {"lr": BAD_LR}}})
    assert main(["tune", "--params", str(params), "--method", "gmp"]) == 0
    assert seen == [("train", "val")]  # the test split is never loaded while tuning

    study = _study()
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE"] * 4
    first = study.trials[0]
    assert first.params == {"optimizer.lr": BAD_LR} and first.user_attrs["handset"]
    for t in study.trials:  # the constraint: sparsity >= 0.95 is feasible
        assert (t.user_attrs["sparsity"] >= 0.95 - 1e-4) == (
            t.system_attrs["constraints:sparsity"] <= 0)
    best = study.best_trial
    assert best.user_attrs["sparsity"] >= 0.95 - 1e-4
    assert best.number != 0 and best.user_attrs["val_accuracy"] > first.user_attrs[
        "val_accuracy"]

    tuned = yaml.safe_load(Path("tuned/gmp.yaml").read_text())
    assert tuned["params"] == best.params and tuned["best"]["trial"] == best.number
    assert tuned["handset"]["trial"] == 0 and tuned["finished_trials"] == 4
    assert capsys.readouterr().out.splitlines()[-1].endswith("; wrote tuned/gmp.yaml")
    rows = Path("tuning/gmp/trials.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,state,val_accuracy,sparsity,feasible")
    for plot in ("pareto.png", "history.png"):
        assert Path("tuning/gmp", plot).read_bytes()[:4] == b"\x89PNG"
    # The files' owner: the study's name and its (redacted) storage, one a line.
    assert Path("tuning/gmp/study.txt").read_text() == f"{STUDY}\n{_db()}\n"

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
    assert run0.info.status == "FINISHED" and run0.data.params["optimizer.lr"] == str(BAD_LR)
    assert run0.data.metrics["val_accuracy"] == pytest.approx(first.user_attrs["val_accuracy"])
    assert len(client.get_metric_history(run0.info.run_id, "prune/val_accuracy")) == 2

    # Resumed: only the missing trials run, under the same MLflow parent run; the study's own
    # files are brought up to date. The chosen values are those tuned/gmp.yaml already holds
    # (not params.yaml's): the file is left as it is, its time included.
    tuned_file = Path("tuned/gmp.yaml")
    os.utime(tuned_file, ns=(10**18, 10**18))
    before = tuned_file.read_bytes()
    assert main(["tune", "--params", str(params), "--method", "gmp", "--trials", "6"]) == 0
    study = _study()
    assert [t.state.name for t in study.trials].count("COMPLETE") == 6
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id
    assert len(_children(client, experiment_id, parent_id)) == 6
    assert len(Path("tuning/gmp/trials.csv").read_text().splitlines()) == 7
    assert study.best_trial.number == best.number
    assert capsys.readouterr().out.splitlines()[-1].endswith(UNCHANGED)
    assert tuned_file.read_bytes() == before and tuned_file.stat().st_mtime_ns == 10**18


def test_the_hand_set_trial_reproduces_the_pipeline_on_the_validation_split(tune_workspace):
    params = tune_workspace(methods={"gmp": {"optimizer": {"lr": BAD_LR}}}, trials=1,
                            tracking=False)
    raw = yaml.safe_load(params.read_text())
    raw["levels"]["compression"] = [20]  # the study's level: tune.target_sparsity 0.95
    raw["seeds"] = [0]  # the study's seed (BAD_LR diverges on seed 1)
    params.write_text(yaml.safe_dump(raw))
    assert main(["run", "--params", str(params), "--method", "gmp"]) == 0
    assert main(["tune", "--params", str(params), "--method", "gmp"]) == 0
    trial0 = _study().trials[0]
    curves = json.loads(Path("runs/gmp/c20/seed0/curves.json").read_text())["retrain"]
    assert trial0.user_attrs["val_loss"] == pytest.approx(curves[-1]["val_loss"], rel=1e-6)
    assert trial0.user_attrs["val_accuracy"] == curves[-1]["val_accuracy"]
    assert not Path("tuned").exists()  # the hand-set trial alone: its values are in use

    # Another trial beats the hand-set values: the pipeline now reads tuned/gmp.yaml, and says
    # so beside the test figures.
    assert main(["tune", "--params", str(params), "--method", "gmp", "--trials", "2"]) == 0
    best = _study().best_trial
    assert best.number == 1 and best.params != {"optimizer.lr": BAD_LR}
    assert main(["run", "--params", str(params), "--method", "gmp"]) == 0
    source = json.loads(Path("evaluation/gmp.json").read_text())["params"]
    assert source["source"] == "tuned" and source["study"] == STUDY
    assert source["values"] == best.params and source["trials"] == 2
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
    params = tune_workspace(methods={"gmp": {"optimizer": {"lr": BAD_LR}}}, trials=3,
                            tracking=False)
    assert main(["tune", "--params", str(params), "--method", "gmp",
                 "--objective", "pareto"]) == 0
    study = _study("default-gmp-pareto")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert all(len(t.values) == 2 for t in study.trials)
    tuned = yaml.safe_load(Path("tuned/gmp.yaml").read_text())
    assert tuned["objective"] == "pareto" and tuned["best"]["sparsity"] >= 0.95 - 1e-4
    assert tuned["best"]["trial"] != 0 and tuned["handset"]["trial"] == 0
    assert tuned["params"] == study.trials[tuned["best"]["trial"]].params
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


# What a study leaves: tuned/<key>.yaml only when the chosen values are new; its files only
# where no other study's are, unless asked.

def _tune(params, *argv):
    return main(["tune", "--params", str(params), "--method", "gmp", *argv])


def _files(folder="tuning/gmp"):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_the_values_in_use_are_not_written_again(tune_workspace, capsys):
    from sparsebench.suite.tuned import Measured, TunedFile, write_tuned
    from sparsebench.tuning.study import tune

    params = tune_workspace(trials=1, tracking=False)
    assert _tune(params) == 0  # the hand-set trial alone: params.yaml's values win
    line = capsys.readouterr().out.splitlines()[-1]
    assert "chosen trial 0: " in line and line.endswith(UNCHANGED), line
    assert not Path("tuned").exists()
    assert len(Path("tuning/gmp/trials.csv").read_text().splitlines()) == 2

    # tuned/gmp.yaml holds other values: they are those in use, so the hand-set winner is new.
    figures = Measured(trial=3, val_accuracy=1.0, sparsity=0.95)
    write_tuned(TunedFile(method="gmp", study="elsewhere", objective="accuracy_at_sparsity",
                          target_sparsity=0.95, seed=0, finished_trials=4, best=figures,
                          params={"optimizer.lr": 0.03}))
    assert _tune(params, "--trials", "2") == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("; wrote tuned/gmp.yaml")
    tuned = yaml.safe_load(Path("tuned/gmp.yaml").read_text())
    assert tuned["params"] == {"optimizer.lr": 0.02} and tuned["study"] == STUDY
    assert tuned["best"]["trial"] == 0 and tuned["finished_trials"] == 2

    # The file holds exactly the chosen values: not a byte of it is written, nor its time.
    path = Path("tuned/gmp.yaml")
    os.utime(path, ns=(10**18, 10**18))
    before = path.read_bytes()
    summary = tune(str(params), "gmp", trials=3)
    assert summary["chosen"]["trial"] == 0 and summary["finished"] == 3
    assert summary["unchanged"] is True and summary["tuned_file"] is None
    assert capsys.readouterr().out.splitlines()[-1].endswith(UNCHANGED)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == 10**18


def _taken(table, whose, study, storage):
    return (f"sparsebench: error: {table}: holds 1 trials of {whose}; --study '{study}' in "
            f"'{storage}' would replace them; allowed: --out DIR for this study's files, or "
            "--overwrite to replace them\n")


def test_a_new_study_is_refused_another_studys_files_unless_out_or_overwrite(
        tune_workspace, capsys):
    params = tune_workspace(trials=1, tracking=False)
    assert _tune(params) == 0
    first = _files()
    assert set(first) == {"trials.csv", "pareto.png", "history.png", "study.txt"}
    capsys.readouterr()

    # The owner file names the study of another storage: refused before the storage is opened
    # (its SQLite file, which does not exist, is not created), before any trial.
    other = f"sqlite:///{Path.cwd() / 'other.db'}"
    assert _tune(params, "--storage", other) == 2
    out, err = capsys.readouterr()
    assert err == _taken("tuning/gmp/trials.csv", f"study '{STUDY}' in '{_db()}'", STUDY, other)
    assert out == ""
    assert _files() == first and not Path("other.db").exists()

    # Files written before owners were recorded (the committed tuning/gmp/ in a fresh clone):
    # refused when the storage does not hold the study...
    Path("tuning/gmp/study.txt").unlink()
    assert _tune(params, "--storage", other) == 2
    out, err = capsys.readouterr()
    assert err == _taken("tuning/gmp/trials.csv", "a study that is not this one", STUDY, other)
    assert out == ""
    assert _files() == {k: v for k, v in first.items() if k != "study.txt"}
    assert not Path("other.db").exists()
    assert len(_study().trials) == 1 and not Path("tuned").exists()

    # ... and taken as the study's own when it does: resumed, its owner file written again.
    assert _tune(params) == 0
    resumed = _files()
    assert resumed["study.txt"] == first["study.txt"]
    assert resumed["trials.csv"] == first["trials.csv"] and len(_study().trials) == 1

    # --out: its files go there; the other study's stay as they are.
    capsys.readouterr()
    assert _tune(params, "--storage", other, "--out", "elsewhere") == 0
    assert _files() == resumed
    assert set(_files("elsewhere")) == {"trials.csv", "pareto.png", "history.png", "study.txt"}
    assert Path("elsewhere/study.txt").read_text() == f"{STUDY}\n{other}\n"
    assert len(Path("elsewhere/trials.csv").read_text().splitlines()) == 2
    assert len(_study(url=other).trials) == 1

    # --overwrite: its files replace the other study's, and the owner file names it.
    assert _tune(params, "--study", "replacing", "--trials", "2", "--overwrite") == 0
    replaced = _files()
    assert set(replaced) == set(first)
    assert all(replaced[name] != first[name] for name in first)
    assert replaced["study.txt"] == f"replacing\n{_db()}\n".encode()
    assert len(Path("tuning/gmp/trials.csv").read_text().splitlines()) == 3
    assert len(_study("replacing").trials) == 2 and len(_study().trials) == 1


def test_a_study_is_refused_the_files_of_the_study_that_wrote_them(tune_workspace, capsys):
    params = tune_workspace(trials=1, tracking=False)
    assert _tune(params) == 0
    assert _tune(params, "--study", "b", "--out", "elsewhere") == 0
    files, theirs = _files(), _files("elsewhere")
    assert theirs["study.txt"] == f"b\n{_db()}\n".encode()
    capsys.readouterr()

    # Study b exists in the storage, but tuning/gmp/ is the default study's: b resumed without
    # --out is refused there, before any trial.
    assert _tune(params, "--study", "b", "--trials", "2") == 2
    out, err = capsys.readouterr()
    assert err == _taken("tuning/gmp/trials.csv", f"study '{STUDY}' in '{_db()}'", "b", _db())
    assert out == ""
    assert _files() == files and _files("elsewhere") == theirs
    assert len(_study("b").trials) == 1 and len(_study().trials) == 1


def test_the_owner_file_redacts_the_storage_password():
    from types import SimpleNamespace

    from sparsebench.tuning.study import owner_text

    req = SimpleNamespace(study="s", storage="postgresql://u:secret@host:5432/db")
    assert owner_text(req) == "s\npostgresql://u:***@host:5432/db\n"


_GOOD_TUNED = {"method": "gmp", "study": "s", "objective": "accuracy_at_sparsity",
               "target_sparsity": 0.95, "seed": 0, "finished_trials": 2,
               "best": {"trial": 1, "val_accuracy": 1.0, "sparsity": 0.95},
               "params": {"optimizer.lr": 0.03}}


@pytest.mark.parametrize("content, expected", [
    ("params: [", "tuned/gmp.yaml: cannot be read as YAML (ParserError); delete it or run "
                  "sparsebench tune again"),
    ("- 1\n", "tuned/gmp.yaml: [1] is not allowed; a mapping written by sparsebench tune"),
    (yaml.safe_dump({**_GOOD_TUNED, "method": "admm"}),
     "tuned/gmp.yaml: method: 'admm' is not allowed; allowed: 'gmp' (the file's name)"),
    (yaml.safe_dump({k: v for k, v in _GOOD_TUNED.items() if k != "params"}),
     "tuned/gmp.yaml: params: missing; a value is required"),
])
def test_a_bad_tuned_file_is_refused_before_any_trial(tune_workspace, capsys, content,
                                                      expected):
    params = tune_workspace(trials=1, tracking=False)
    Path("tuned").mkdir()
    Path("tuned/gmp.yaml").write_text(content)
    err = _refused(capsys, ["tune", "--params", str(params), "--method", "gmp"], expected)
    assert err == f"sparsebench: error: {expected}\n"
    assert Path("tuned/gmp.yaml").read_text() == content
    assert not Path("tuning/gmp").exists()  # no study files, no study, no trial
    assert optuna.get_all_study_names(_db()) == []


def test_a_study_made_before_its_suite_was_recorded_is_adopted(tune_workspace, capsys):
    params = tune_workspace(trials=1, tracking=False)
    assert _tune(params) == 0
    con = sqlite3.connect("tuning/optuna.db")
    with con:
        deleted = con.execute("DELETE FROM study_user_attributes WHERE key = 'suite'").rowcount
    con.close()
    assert deleted == 1 and "suite" not in _study().user_attrs
    capsys.readouterr()
    assert _tune(params, "--trials", "2") == 0
    assert f"study '{STUDY}' in {_db()} (resumed): 1 of 2 trials finished" in \
        capsys.readouterr().out
    study = _study()
    assert study.user_attrs["suite"] == "default" and len(study.trials) == 2
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2


def test_a_study_made_for_another_suite_is_refused_and_left_untouched(tune_workspace, capsys):
    params = tune_workspace(trials=1, tracking=False)
    assert _tune(params) == 0
    db, files = Path("tuning/optuna.db").read_bytes(), _files()
    assert _study().user_attrs["suite"] == "default"
    capsys.readouterr()
    raw = yaml.safe_load(params.read_text())
    raw["suite"] = "other"
    params.write_text(yaml.safe_dump(raw))
    err = _refused(capsys, ["tune", "--params", str(params), "--method", "gmp",
                            "--study", STUDY],
                   f"--study: '{STUDY}' exists in '{_db()}' with suite default, objective "
                   "accuracy_at_sparsity, method_key gmp, target_sparsity 0.95, directions "
                   "maximize; allowed: the same suite, objective, method and target, or "
                   "another --study name")
    assert err.startswith("sparsebench: error: --study: ")
    assert Path("tuning/optuna.db").read_bytes() == db and _files() == files
    assert len(_study().trials) == 1 and not Path("tuned").exists()
