"""The sweep on a real Ray cluster on 127.0.0.1 (a head and a second node, one CPU each, their
processes started here and stopped by their ids) with a real MLflow tracking server: the same
files as the local pool, each run once in MLflow, a node killed mid-sweep, the GPU assignment
(Ray's GPU resource declared on a node without one), and the bad inputs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
import yaml
from conftest import small_params
from test_tracking_server import mlflow_server  # noqa: F401 (the tracking server fixture)

from sparsebench.pipeline.cli import main
from sparsebench.pipeline.executor import run_tasks
from sparsebench.pipeline.tasks import Placement, Task

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")
SPARSEBENCH = str(Path(sys.executable).parent / "sparsebench")
METHODS = ("magnitude", "admm_l1")  # a plain run, and a prune phase shared by the levels
#: what may differ between two executors' result.json: timings, and where it ran
TIMED = ("seconds", "latency_")
WORKER_FIELDS = ("workers",)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc", str(pid), "cmdline").read_bytes().replace(b"\0", b" ").decode())
    except OSError:
        return ""


class Cluster:
    """A Ray head and ``nodes - 1`` more nodes on 127.0.0.1, each ``ray start --block`` in a
    process group of its own, with ``cpus`` CPUs and ``gpus`` GPUs (declared: Ray's resource,
    whatever the hardware)."""

    def __init__(self, root: Path, nodes: int = 2, gpus: int = 0, cpus: int = 1):
        self.root, self.port = root, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        # no token authentication (a token file under ~/.ray would turn it on for the head)
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes, self.gpus, self.cpus = nodes, gpus, cpus

    def start(self) -> Cluster:
        common = ["--num-cpus", str(self.cpus), "--num-gpus", str(self.gpus), "--block",
                  "--disable-usage-stats"]
        self._start([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port",
                     str(self.port), "--include-dashboard", "false", *common], "head")
        for i in range(1, self.nodes):
            self._start([RAY, "start", "--address", self.address, *common], f"node{i}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.alive_nodes() == self.nodes:
                return self
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"the Ray cluster did not come up: {self.root}")

    def _start(self, argv: list[str], name: str) -> None:
        with (self.root / f"{name}.log").open("a") as log:
            self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                   env=self.env, start_new_session=True))

    def alive_nodes(self) -> int:
        """The nodes ``ray status`` lists as active (it asks the head's GCS)."""
        done = subprocess.run([RAY, "status", "--address", self.address], capture_output=True,
                              text=True, env=self.env, timeout=60)
        if done.returncode != 0 or "Active:" not in done.stdout:
            return 0
        active = done.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        return sum(" node_" in line for line in active.splitlines())

    def raylet(self, node: int) -> int:
        """The pid of node ``node``'s raylet (a child of its ``ray start``)."""
        for child in _children(self.processes[node].pid):
            if "raylet" in _cmdline(child):
                return child
        raise RuntimeError(f"node {node} has no raylet")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what it left, by its group's id


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One two-node cluster for the module's tests (the one that kills a node comes last)."""
    import ray

    c = Cluster(tmp_path_factory.mktemp("ray")).start()
    yield c
    ray.shutdown()
    c.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """The shrunk suite trained by the local pool: the reference of the Ray sweeps."""
    root = tmp_path_factory.mktemp("local") / "ws"
    _suite(root, {"workers": 2})
    for stage in ("prepare", "run"):
        done = _sh([SPARSEBENCH, stage], root)
        assert done.returncode == 0, done.stderr
    return root


def _suite(root: Path, execution: dict, uri: str | None = None) -> Path:
    """Two methods, two levels, two seeds, a few hundred samples."""
    root.mkdir(parents=True)
    path = small_params(root, tracking={"enabled": uri is not None, "uri": uri})
    raw = yaml.safe_load(path.read_text())
    raw["seeds"] = [0, 1]
    raw["levels"]["compression"] = [8, 32]
    raw["data"]["limit"] = 400
    raw["methods"] = {key: raw["methods"][key] for key in METHODS}
    raw["tune"]["spaces"] = {}
    raw["retrain"]["epochs"] = 3  # long enough for a node to be killed in
    raw["execution"] = {"threads": 1, **execution}
    path.write_text(yaml.safe_dump(raw))
    return path


def _sh(argv: list[str], root: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARSEBENCH_ROOT": str(root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "runs").rglob("*"))
            if p.is_file() and p.suffix == ".safetensors"}


def _result(path: Path) -> dict:
    """A result.json without its timings and the environment's worker fields."""
    r = json.loads(path.read_text())
    r.pop("seconds")
    r["figures"] = {k: v for k, v in r["figures"].items() if not k.startswith(TIMED)}
    r["environment"] = {k: v for k, v in r["environment"].items() if k not in WORKER_FIELDS}
    return r


def _same_as_local(local: Path, ray_root: Path) -> None:
    files = _files(ray_root)
    assert files and files == _files(local)  # models, masks, compressed checkpoints
    results = sorted((local / "runs").rglob("result.json"))
    assert len(results) == len(METHODS) * 2 * 2
    for path in results:
        assert _result(path) == _result(ray_root / path.relative_to(local)), path


def _seed_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name("sparsebench-default")
    return client.search_runs([found.experiment_id], "tags.run_kind = 'seed'", max_results=500)


def _logged_once(uri: str) -> None:
    """Each run once, finished, its retrain curve there with each epoch once."""
    from mlflow import MlflowClient

    runs = _seed_runs(uri)
    prints = [r.data.tags["fingerprint"] for r in runs]
    assert len(prints) == len(METHODS) * 2 * 2 and len(set(prints)) == len(prints)
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        steps = [m.step for m in MlflowClient(uri).get_metric_history(
            run.info.run_id, "retrain/val_accuracy")]
        assert steps and steps == sorted(set(steps)), (run.info.run_name, steps)


def test_the_sweep_on_two_ray_nodes_gives_the_local_pools_files_each_run_once_in_mlflow(
        tmp_path, cluster, local, mlflow_server):  # noqa: F811
    root = tmp_path / "ray"
    _suite(root, {"backend": "ray", "address": cluster.address}, mlflow_server.uri)
    for stage in ("prepare", "run"):
        done = _sh([SPARSEBENCH, stage], root)
        assert done.returncode == 0, done.stderr
    assert f"on the Ray cluster at {cluster.address} (2 at once)" in done.stdout
    _same_as_local(local, root)
    _logged_once(mlflow_server.uri)
    again = _sh([SPARSEBENCH, "run"], root)  # all cached: nothing trains, nothing is logged
    assert again.returncode == 0 and "run: 0 runs to train" in again.stdout, again.stdout
    assert len(_seed_runs(mlflow_server.uri)) == len(METHODS) * 2 * 2


def test_an_sqlite_store_with_a_multi_node_cluster_is_refused_before_training(
        tmp_path, cluster):
    root = tmp_path / "ws"
    _suite(root, {"backend": "ray", "address": cluster.address}, "sqlite:///mlruns/mlflow.db")
    assert _sh([SPARSEBENCH, "prepare"], root).returncode == 0
    done = _sh([SPARSEBENCH, "run"], root)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("sparsebench: error: tracking.uri: 'sqlite:///mlruns/mlflow.db' is a "
                           "file on this machine, which the other nodes of the Ray cluster "
                           "(2 nodes) cannot reach"), line
    assert "mlflow server" in line and "tracking.enabled: false" in line
    assert not (root / "runs").exists()  # nothing trained


def test_a_node_killed_mid_sweep_loses_nothing_and_logs_nothing_twice(
        tmp_path, cluster, local, mlflow_server):  # noqa: F811
    """SIGKILL to the second node's raylet once a run started there: Ray runs that node's
    tasks again on the head; every run's files arrive, each run is in MLflow once."""
    root = tmp_path / "ray"
    _suite(root, {"backend": "ray", "address": cluster.address}, mlflow_server.uri)
    assert _sh([SPARSEBENCH, "prepare"], root).returncode == 0
    raylet = cluster.raylet(1)
    env = {**os.environ, "SPARSEBENCH_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (root / "run.log").open("w")
    process = subprocess.Popen([SPARSEBENCH, "run"], cwd=root, env=env, text=True,
                               stdout=log, stderr=subprocess.STDOUT)
    killed = False
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and not killed:
        started = "runs to train on the Ray cluster" in (root / "run.log").read_text()
        if started and any("ray::_run_job" in _cmdline(w) for w in _children(raylet)):
            os.kill(raylet, signal.SIGKILL)  # a method's run is training there
            killed = True
        time.sleep(0.02)
    assert process.wait(timeout=600) == 0, (root / "run.log").read_text()[-3000:]
    assert killed, "no run started on the second node"
    _same_as_local(local, root)
    _logged_once(mlflow_server.uri)


def test_each_ray_task_sees_only_its_gpu(tmp_path_factory):
    """One node declaring two GPUs (Ray's GPU resource, no GPU behind it): with runs_per_gpu
    1 two tasks at once, each with its own CUDA_VISIBLE_DEVICES; with 2, four tasks share
    the two."""
    import ray

    c = Cluster(tmp_path_factory.mktemp("ray-gpus"), nodes=1, gpus=2, cpus=4).start()
    try:
        for per_gpu, count in ((1, 2), (2, 4)):
            out = tmp_path_factory.mktemp(f"gpus{per_gpu}")

            def seen(name: str, out: Path = out) -> None:
                time.sleep(2.0)  # the others start meanwhile
                (out / name).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "none"))

            placement = Placement(count, 1, ("0", "1"), per_gpu, backend="ray",
                                  address=c.address)
            tasks = [Task(str(i), lambda i=i: seen(str(i)), writes=()) for i in range(count)]
            assert run_tasks(tasks, placement) == {}
            got = sorted((out / str(i)).read_text() for i in range(count))
            assert got == sorted(["0", "1"] * per_gpu), got
    finally:
        ray.shutdown()
        c.stop()


def _refused(address: str, root: Path, capsys, monkeypatch) -> str:
    """The run stage's stderr for a suite at Ray ``address``, after it exited 2 and trained
    nothing; one line."""
    path = _suite(root, {"backend": "ray", "address": address})
    monkeypatch.chdir(path.parent)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(path.parent))
    assert main(["prepare", "--params", str(path)]) == 0
    capsys.readouterr()
    assert main(["run", "--params", str(path)]) == 2
    assert not (path.parent / "runs").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_no_cluster_at_the_address_is_one_line_before_any_training(workspace, capsys,
                                                                  monkeypatch):
    port = _free_port()
    err = _refused(f"127.0.0.1:{port}", workspace / "ws", capsys, monkeypatch)
    assert err.startswith(f"sparsebench: error: execution.address: '127.0.0.1:{port}': no Ray "
                          "cluster answers there"), err
    assert "ray start --head" in err


def test_a_ray_client_address_without_ray_client_is_one_line(workspace, capsys, monkeypatch):
    """``ray://`` needs the ``ray[client]`` extra; without it, one line saying so (a port that
    listens stands for the head's client server)."""
    import importlib.util

    if importlib.util.find_spec("grpc") is not None:
        pytest.skip("Ray Client is installed here")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"ray://127.0.0.1:{server.getsockname()[1]}"
        err = _refused(address, workspace / "ws", capsys, monkeypatch)
    assert f"execution.address: '{address}' is a Ray Client address" in err
    assert "pip install 'ray[client]'" in err


def test_ray_under_torchrun_is_refused_on_every_rank(workspace):
    path = _suite(workspace / "ws", {"backend": "ray", "address": "local"})
    env = {**os.environ, "SPARSEBENCH_ROOT": str(path.parent)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "sparsebench", "run", "--params", str(path)]
    done = subprocess.run(torchrun, env=env, cwd=path.parent, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("sparsebench: error: execution.backend: 'ray' cannot run under "
                             "torchrun") == 2, done.stderr[-2000:]
