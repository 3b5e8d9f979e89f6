"""What Ray costs against the local pool: the same 8 runs (magnitude and gmp at 8x and 32x, two
seeds: a shrunk default suite, 10-20 s a run) trained by the run stage's sweep on the local pool
(two forked workers) and on a two-node Ray cluster on the same machine (a head and a second
node, one CPU each, started here by `ray start` and stopped by their process ids).

Printed: the wall of each sweep (this process, the same code path as `sparsebench run`), the
ratio Ray / local without Ray's start-up and with it, the start-up in seconds (the cluster's
`ray start` until both nodes are alive, and this driver's connection), and Ray's overhead per
run in milliseconds: (Ray's wall - the local wall) x slots / runs. Both sweeps train from
nothing in workspaces of their own; their model files are compared byte for byte.

Run it from the repository root after ``dvc repro`` (it copies data/prepared and runs/pretrain
from the working directory):

    python benchmarks/sweep_scaling.py
    python benchmarks/sweep_scaling.py --toy    # tiny synthetic data: checks that it runs
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
METHODS = ("magnitude", "gmp")


def workspace(path: Path, toy: bool, execution: dict) -> Path:
    """A shrunk default suite in ``path``: the working directory's data and pretrained models
    (copied), or tiny synthetic ones made here for ``--toy``."""
    (path / "runs").mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(seeds=[0, 1], device="cpu")
    params["levels"]["compression"] = [8, 32]
    params["methods"] = {k: params["methods"][k] for k in METHODS}
    params["tune"]["spaces"] = {}
    params["tracking"]["enabled"] = False
    params["execution"] = {"threads": 1, **execution}
    if toy:
        params["budget"] = None
        params["data"].update(dataset="synthetic", val_size=64, limit=400)
        params["pretrain"].update(epochs=1, batch_size=32)
        params["retrain"].update(epochs=1, batch_size=32)
        params["methods"]["gmp"].update(epochs=2, end_epoch=1, frequency=2, batch_size=32)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not toy:
        for part in ("data/prepared", "runs/pretrain"):
            if not (Path.cwd() / part).exists():
                sys.exit(f"sweep_scaling: {part} is missing here; run it from the repository "
                         "root after dvc repro, or pass --toy")
            shutil.copytree(Path.cwd() / part, path / part)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(log: Path) -> tuple[str, list[subprocess.Popen]]:
    """A head and a second node on 127.0.0.1, one CPU each; returns once both are alive."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Ray's sockets live under its temp dir, and a Unix socket path holds 107 bytes at most
    # and Ray runs its workers at nice 15 unless told (RAY_worker_niceness): the local pool's
    # run at the stage's own priority, so the comparison gives Ray's the same
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": "/tmp",
           "RAY_worker_niceness": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    processes = []
    with log.open("a") as out:
        processes.append(subprocess.Popen(
            [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--include-dashboard", "false", *common], stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True))
        processes.append(subprocess.Popen([RAY, "start", "--address", address, *common],
                                          stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = subprocess.run([RAY, "status", "--address", address], capture_output=True,
                                text=True, env=env, timeout=60).stdout
        if "Active:" in status and sum(" node_" in line for line in status.split(
                "Active:", 1)[1].split("Pending:", 1)[0].splitlines()) == 2:
            return address, processes
        time.sleep(0.5)
    stop_cluster(processes)
    sys.exit("sweep_scaling: the Ray cluster did not come up")


def stop_cluster(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def cpu_by_process(processes: list[subprocess.Popen]) -> dict[str, float]:
    """CPU seconds (user + system) so far of every process under the cluster's `ray start`
    processes, summed by kind: the runs' workers, and Ray's own (raylet, GCS, agents, ...)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        stats[int(entry.name)] = (cmd, (int(fields[11]) + int(fields[12])) / tick)
    totals: dict[str, float] = {}
    todo = [p.pid for p in processes]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if pid in stats:
            cmd, seconds = stats[pid]
            kind = ("runs (ray workers)" if cmd.startswith("ray::") and "Agent" not in cmd
                    else "Ray's own processes")
            totals[kind] = totals.get(kind, 0.0) + seconds
    return totals


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def sweep_in(path: Path) -> float:
    """The run stage's sweep of ``path``'s suite, in this process; its wall seconds."""
    from sparsebench.pipeline.sweep import sweep
    from sparsebench.suite.load import load_params

    os.chdir(path)
    os.environ["SPARSEBENCH_ROOT"] = str(path)
    params, methods = load_params(path / "params.yaml")
    start = time.perf_counter()
    sweep(params, methods)
    return time.perf_counter() - start


def prepare(path: Path) -> None:
    from sparsebench.pipeline.cli import main

    os.chdir(path)
    os.environ["SPARSEBENCH_ROOT"] = str(path)
    for stage in ("prepare", "pretrain"):
        assert main([stage]) == 0


def models(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes()
            for p in sorted((path / "runs").rglob("*.safetensors"))
            if "pretrain" not in p.parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="tiny synthetic data")
    args = parser.parse_args()
    import ray

    from sparsebench.pipeline import ray_pool
    from sparsebench.pipeline.tasks import Placement

    with tempfile.TemporaryDirectory(prefix="sweep-scaling-") as tmp:
        tmp = Path(tmp)
        local = workspace(tmp / "local", args.toy, {"workers": 2})
        if args.toy:
            prepare(local)
        remote = tmp / "ray"
        shutil.copytree(local, remote)
        params = yaml.safe_load((remote / "params.yaml").read_text())
        driver = _own_cpu()
        local_wall = sweep_in(local)
        local_driver = _own_cpu() - driver
        started = time.perf_counter()
        address, processes = start_cluster(tmp / "ray.log")
        cluster_up = time.perf_counter() - started
        try:
            params["execution"] = {"threads": 1, "backend": "ray", "address": address}
            (remote / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            started = time.perf_counter()
            cluster = ray_pool.connect(address)
            connect = time.perf_counter() - started
            started = time.perf_counter()  # the workers started, their imports done
            ray_pool.warm_up(Placement(ray_pool.slots(cluster, Placement(1, 1)), 1,
                                       backend="ray", address=address))
            warm = time.perf_counter() - started
            before, driver = cpu_by_process(processes), _own_cpu()
            ray_wall = sweep_in(remote)
            used = {k: v - before.get(k, 0.0) for k, v in cpu_by_process(processes).items()}
            used["the driver (this process)"] = _own_cpu() - driver
        finally:
            ray.shutdown()
            stop_cluster(processes)
        same = models(local) == models(remote) and bool(models(local))
    runs, slots = 2 * 2 * len(METHODS), int(cluster["resources"].get("CPU", 1))
    startup = cluster_up + connect + warm
    print(f"sweep_scaling: {runs} runs ({', '.join(METHODS)} at 8x and 32x, seeds 0 and 1"
          f"{', toy data' if args.toy else ''}); local pool 2 workers, Ray 2 nodes x 1 CPU")
    print(f"  local pool wall        {local_wall:8.1f} s")
    print(f"  Ray wall               {ray_wall:8.1f} s")
    print(f"  Ray start-up           {startup:8.1f} s (cluster {cluster_up:.1f} s, "
          f"driver connect {connect:.1f} s, workers' start and imports {warm:.1f} s)")
    print(f"  ratio Ray / local      {ray_wall / local_wall:8.3f} without start-up, "
          f"{(ray_wall + startup) / local_wall:.3f} with it")
    print(f"  Ray overhead per run   {1000 * (ray_wall - local_wall) * slots / runs:8.0f} ms")
    print(f"  model files identical  {same}")
    print(f"  CPU during the local sweep, the stage (this process): {local_driver:.1f} s")
    for kind, seconds in sorted(used.items()):
        print(f"  CPU during the Ray sweep, {kind}: {seconds:.1f} s "
              f"({seconds / (slots * ray_wall):.1%} of {slots} CPUs x the wall)")


if __name__ == "__main__":
    main()
