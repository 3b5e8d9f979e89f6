"""MLflow against a real tracking server: `mlflow server` started here as a process of its own on
a free port (SQLite backend, artifacts under tmp_path), the stages run as a user runs them.

* the small pipeline (`dvc repro`) against the server makes the runs it makes in the SQLite
  store, one per (method, level, seed), per parent, per pretrain seed, and the report; a forced
  second `dvc repro` against the same server adds none;
* the server unreachable at start: one line, exit 2, nothing trained;
* the server stopped while a stage trains: the stage finishes its training, keeps its files and
  exits 1 with one line; rerun with the server back, it trains nothing and logs the finished
  runs from their own records, every epoch once.

Select them with ``pytest -m tracking_server``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import seed_store, small_params
from test_dvc import _sh, _trained, project  # noqa: F401 (the DVC project fixture)

pytestmark = [pytest.mark.slow, pytest.mark.tracking_server]
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `mlflow server` process group (its backend and artifacts in ``root``)."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> Server:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with (self.root / "server.log").open("a") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.root / "artifacts")],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.root / "server.log").read_text()[-2000:]
                pytest.fail(f"mlflow server exited: {tail}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"mlflow server did not answer in {timeout:.0f}s")

    def stop(self) -> None:
        """SIGKILL to the server's own process group: a crash, not a clean shutdown."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):  # the group: uvicorn's children too
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def mlflow_server(tmp_path_factory, store_template):
    root = tmp_path_factory.mktemp("mlflow-server")
    seed_store(store_template, root / "mlflow.db")  # its backend, as the server would make it
    server = Server(root).start()
    yield server
    server.stop()


def _runs(uri: str, experiment: str = "sparsebench-default") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=5000)


def _kinds(runs: list) -> Counter:
    return Counter(r.data.tags.get("run_kind") or r.data.tags.get("dvc_stage") for r in runs)


def _shrink_levels(path: Path, uri: str | None = None) -> None:
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["levels"]["compression"] = [8, 32]
    params["tracking"]["uri"] = uri
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _commit(path: Path, env: dict) -> None:
    _sh("git", "commit", "-qam", "params", cwd=path, env=env)


def test_dvc_repro_against_a_server_logs_the_runs_of_the_sqlite_store(
        project, mlflow_server):  # noqa: F811
    """The runs a SQLite store gets (`test_pipeline.py`'s end-to-end test counts them), here
    over HTTP: one per seed, per (method, level) parent, per pretrain seed, and the report's;
    a forced rerun of the run stage adds none and logs no epoch twice."""
    from mlflow import MlflowClient

    path, env = project
    _shrink_levels(path, mlflow_server.uri)
    _commit(path, env)
    out = _sh("dvc", "repro", cwd=path, env=env)
    assert _trained(out, "gmp") == (4, 0, 4)
    served = _runs(mlflow_server.uri)
    # dense: 2 seeds + 1 parent; gmp: 2 levels x 2 seeds + 2 parents; 2 pretrain seeds; report
    assert _kinds(served) == Counter(
        {"seed": 6, "parent": 3, "pretrain": 2, "report": 1})
    assert {r.info.status for r in served} == {"FINISHED"}
    client = MlflowClient(mlflow_server.uri)
    gmp = next(r for r in served if r.info.run_name == "gmp-c8-seed0")
    assert [m.step for m in client.get_metric_history(gmp.info.run_id, "retrain/val_accuracy")] \
        == [1, 2, 3, 4]  # every epoch once, step = epoch
    assert [a.path for a in client.list_artifacts(gmp.info.run_id, "model")] == [
        "model/model.sparse.safetensors"]
    assert {"method", "family", "level", "seed", "params_source", "git_commit", "code_digest",
            "dvc_stage", "fingerprint"} <= set(gmp.data.tags)
    (dataset,) = gmp.inputs.dataset_inputs
    assert dataset.dataset.name == "synthetic" and '"test": 64' in dataset.dataset.profile
    parent = next(r for r in served if r.info.run_id == gmp.data.tags["mlflow.parentRunId"])
    assert {"test_accuracy_mean", "compression_mean", "flop_speedup_mean",
            "train_seconds_mean", "sparsity_std"} <= set(parent.data.metrics)

    out = _sh("dvc", "repro", "--force", "--single-item", "run", cwd=path, env=env)
    assert _trained(out, "gmp") == (4, 4, 0)
    again = _runs(mlflow_server.uri)
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in served)
    assert [m.step for m in client.get_metric_history(gmp.info.run_id, "retrain/val_accuracy")] \
        == [1, 2, 3, 4]


def _cli(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "SPARSEBENCH_ROOT": str(cwd),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "sparsebench", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _own_lines(err: str) -> list[str]:
    """The stage's own lines on stderr (the workers' torch may add its CUDA_HOME warning)."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if "torch/utils/cpp_extension.py" not in line]


def _workspace(root: Path, uri: str, retrain_epochs: int = 2) -> Path:
    path = small_params(root, tracking={"enabled": True, "uri": uri})
    params = yaml.safe_load(path.read_text())
    params["methods"] = {k: params["methods"][k] for k in ("dense", "gmp")}
    params["tune"]["spaces"] = {"gmp": params["tune"]["spaces"]["gmp"]}
    params["levels"]["compression"] = [8, 32]
    params["methods"]["gmp"]["retrain"]["epochs"] = retrain_epochs
    params["budget"] = None
    path.write_text(yaml.safe_dump(params))
    return path


def test_server_unreachable_at_start_is_one_line_and_trains_nothing(workspace):
    uri = f"http://127.0.0.1:{_free_port()}"
    _workspace(workspace, uri)
    assert _cli("prepare", cwd=workspace).wait(timeout=300) == 0
    run = _cli("run", "--method", "gmp", cwd=workspace)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 2
    assert err.count("\n") == 1 and f"tracking.uri: '{uri}' cannot be reached" in err, err
    assert "to train" not in out and not (workspace / "runs").exists()


def test_server_stopped_mid_stage_then_the_rerun_logs_the_finished_runs(workspace,
                                                                       mlflow_server):
    from mlflow import MlflowClient

    _workspace(workspace, mlflow_server.uri, retrain_epochs=30)
    for stage in ("prepare", "pretrain"):
        done = _cli(stage, cwd=workspace)
        assert done.wait(timeout=600) == 0, done.stderr.read()
    run = _cli("run", "--method", "gmp", cwd=workspace)
    lines = []
    for line in run.stdout:  # the first live epoch: stop the server under the running stage
        lines.append(line)
        if " epoch " in line:
            mlflow_server.stop()
            break
    out, err = run.communicate(timeout=600)
    out = "".join(lines) + out
    assert run.returncode == 1, out[-3000:] + err
    (line,) = _own_lines(err)
    assert "tracking: logging the runs of gmp" in line and mlflow_server.uri in line
    assert "(runs/gmp)" in line
    assert _trained(out, "gmp") == (4, 0, 4)
    assert "tracking: live logging stopped" in out  # the server went while runs trained
    for level in ("c8", "c32"):  # the training finished and its files are kept
        for seed in (0, 1):
            assert (workspace / f"runs/gmp/{level}/seed{seed}/result.json").exists()
    assert (workspace / "evaluation" / "gmp.json").exists()

    mlflow_server.start()
    rerun = _cli("run", "--method", "gmp", cwd=workspace)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out[-3000:] + err
    assert _trained(out, "gmp") == (4, 4, 0) and "runs completed from their records" in out
    runs = [r for r in _runs(mlflow_server.uri) if r.data.tags.get("method") == "gmp"]
    assert Counter(r.data.tags["run_kind"] for r in runs) == {"seed": 4, "parent": 2}
    assert {r.info.status for r in runs} == {"FINISHED"}
    client = MlflowClient(mlflow_server.uri)
    for r in runs:
        if r.data.tags["run_kind"] == "seed":  # nothing lost, nothing twice
            tags = r.data.tags
            curves = json.loads((workspace / "runs" / "gmp" / tags["level_name"] /
                                 f"seed{tags['seed']}" / "curves.json").read_text())
            assert len(curves["retrain"]) == 30
            for phase, rows in curves.items():
                history = client.get_metric_history(r.info.run_id, f"{phase}/val_accuracy")
                assert sorted(m.step for m in history) == [row["epoch"] for row in rows]
            assert "test_accuracy" in r.data.metrics

    before = len(_runs(mlflow_server.uri))
    again = _cli("run", "--method", "gmp", cwd=workspace)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0 and "completed from their records" not in out, err
    assert len(_runs(mlflow_server.uri)) == before
