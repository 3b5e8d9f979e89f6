"""Tuning on a real PostgreSQL server that the test starts in a temporary folder (initdb and
pg_ctl from the Debian package, which ``make test`` installs when missing; a unix socket in the
folder, no TCP), stopped at teardown: two worker processes, one of them SIGKILLed mid-trial.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

pytestmark = pytest.mark.slow


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def _as_postgres_user():
    """PostgreSQL refuses to run as root: drop to the package's ``postgres`` user."""
    if os.geteuid() != 0:
        return None
    import pwd

    user = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return demote, user


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (make test installs the Debian package)")
    demote = _as_postgres_user()
    folder = Path(tempfile.mkdtemp(prefix="sparsebench-pg-"))
    if demote is not None:
        os.chown(folder, demote[1].pw_uid, demote[1].pw_gid)
    with socket.socket() as probe:  # the port names the socket file; any free one will do
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = {"preexec_fn": demote[0] if demote else None, "capture_output": True, "text": True,
           "timeout": 60}
    data = folder / "data"
    init = subprocess.run([bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                           "--no-sync", "-E", "UTF8"], **run)
    assert init.returncode == 0, init.stderr
    options = f"-k {folder} -p {port} -c listen_addresses='' -c fsync=off"
    start = subprocess.run([bindir / "pg_ctl", "-D", data, "-o", options, "-l",
                            folder / "log", "-w", "start"], **run)
    assert start.returncode == 0, start.stderr + (folder / "log").read_text()
    try:
        yield f"postgresql://postgres@/postgres?host={folder}&port={port}"
    finally:
        subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], **run)
        shutil.rmtree(folder, ignore_errors=True)


def _victim(url: str, study: str, deadline: float) -> tuple[int, int]:
    """(pid, trial number) of a worker with a trial RUNNING, as soon as there is one."""
    storage = optuna.storages.RDBStorage(url)
    while time.time() < deadline:
        try:
            trials = optuna.load_study(study_name=study, storage=storage).trials
        except KeyError:  # not created yet
            trials = []
        for t in trials:
            if t.state.name == "RUNNING" and "worker_pid" in t.user_attrs:
                return t.user_attrs["worker_pid"], t.number
        time.sleep(0.05)
    raise AssertionError("no trial started in time")


def test_a_sigkilled_worker_s_trial_fails_by_heartbeat_and_is_retried(postgres_url,
                                                                        tune_workspace):
    from mlflow import MlflowClient

    from sparsebench.tracking.runs import tracking_uri

    params = tune_workspace(trials=3, methods={"gmp": {"epochs": 25}})
    study = "default-gmp-accuracy_at_sparsity"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", "tune", "--params",
                             str(params), "--method", "gmp", "--workers", "2", "--storage",
                             postgres_url], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        try:
            pid, number = _victim(postgres_url, study, time.time() + 90)
        except AssertionError:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"no trial started in time: {out[-800:]} {err[-800:]}") from None
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=150)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    assert "exited with -9" in out

    trials = optuna.load_study(study_name=study, storage=postgres_url).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3, states
    assert trials[number].state.name == "FAIL"  # marked by the heartbeat, not by the worker
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].system_attrs["retry_history"] == [number]
    assert retries[0].params == trials[number].params

    client = MlflowClient(tracking_uri=tracking_uri())
    experiment = client.get_experiment_by_name("sparsebench-default-tune")
    parent = optuna.load_study(study_name=study,
                               storage=postgres_url).user_attrs["mlflow_parent_run_id"]
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    finished = sorted(int(r.data.tags["optuna.trial"]) for r in children
                      if r.info.status == "FINISHED")
    complete = sorted(t.number for t in trials if t.state.name == "COMPLETE")
    assert finished == complete  # one nested run per finished trial: none lost, none doubled
    assert number not in [int(r.data.tags["optuna.trial"]) for r in children]
    retry_run = next(r for r in children if int(r.data.tags["optuna.trial"]) == retries[0].number)
    assert retry_run.data.tags["optuna.retry_of"] == str(number)
