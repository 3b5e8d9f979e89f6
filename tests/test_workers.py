"""Runs side by side in the local pool: the same weights alone or beside others, a dead worker
fails its run only, each worker its own GPU, jobs made at their turn, and the execution keys'
bad values."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from conftest import small_params
from safetensors import safe_open

from sparsebench.pipeline.cli import main
from sparsebench.pipeline.executor import run_tasks
from sparsebench.pipeline.tasks import Job, Placement, Task, raise_failures


def _tensors(path: Path) -> dict[str, bytes]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}  # noqa: SIM118


def _workspace(root: Path, workers: int) -> Path:
    root.mkdir()
    path = small_params(root, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["levels"]["compression"] = [32]
    raw["execution"] = {"threads": 1, "workers": workers}
    raw["data"]["limit"] = 512
    path.write_text(yaml.safe_dump(raw))
    return path


def _prepared(path: Path, monkeypatch) -> Path:
    """The workspace of ``path`` entered, its data prepared and its models pretrained."""
    monkeypatch.chdir(path.parent)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(path.parent))
    for stage in ("prepare", "pretrain"):
        assert main([stage, "--params", str(path)]) == 0
    return path


@pytest.mark.parametrize("key", ["gmp", "admm"])
def test_a_run_gives_the_same_weights_alone_or_beside_others(key, tmp_path, monkeypatch):
    outputs = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        path = _prepared(_workspace(root, workers), monkeypatch)
        assert main(["run", "--params", str(path), "--method", key]) == 0
        outputs[workers] = {str(p.relative_to(root)): _tensors(p)
                            for p in sorted(root.glob("runs/**/model.safetensors"))}
    assert len(outputs[1]) == 2 + 2  # pretrain seeds + one level x seeds
    assert outputs[1] == outputs[2]


def _write(path: Path) -> None:
    path.write_text("done")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _fail() -> None:
    raise FloatingPointError("the training loss is nan at epoch 3")


def _gpu(path: Path) -> None:
    """Wait for the other workers to start, then say which GPU this one sees."""
    import time

    time.sleep(1.0)
    path.write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "none"))


def test_each_worker_sees_only_its_gpu_runs_per_gpu_sharing_one(tmp_path):
    """Four workers on two GPUs, two runs each: slots 0, 1 on GPU "4", slots 2, 3 on GPU "6"
    (CUDA_VISIBLE_DEVICES entries), set in the worker before CUDA starts; none in the stage."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    placement = Placement(4, 1, gpus=("4", "6"), runs_per_gpu=2)
    failures = run_tasks([Task(n, lambda n=n: _gpu(tmp_path / n)) for n in "abcd"], placement)
    assert failures == {}
    assert sorted((tmp_path / n).read_text() for n in "abcd") == ["4", "4", "6", "6"]
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before
    assert [placement.gpu_of(i) for i in range(6)] == ["4", "4", "6", "6", "4", "4"]


def test_a_job_is_made_at_its_turn_and_none_means_done(tmp_path):
    """``start`` runs in the stage's process once the task's dependency succeeded (it sees that
    one's file); None: nothing to run, and its own dependants go on at once."""
    seen = []

    def start_b():
        seen.append((tmp_path / "a").read_text())  # a's output, written by its worker
        return None

    tasks = [Task("a", lambda: _write(tmp_path / "a")),
             Task("b", after="a", start=start_b),
             Task("c", after="b", start=lambda: Job(lambda: _write(tmp_path / "c")))]
    done = []
    assert run_tasks(tasks, Placement(2, 1), on_done=lambda t: done.append(t.name)) == {}
    assert seen == ["done"] and done == ["a", "b", "c"]
    assert (tmp_path / "c").read_text() == "done"


def test_a_task_after_a_failed_one_fails_without_running(tmp_path):
    failures = run_tasks([Task("nan", _fail), Task("next", lambda: _write(tmp_path / "x"),
                                                   after="nan")], Placement(2, 1))
    assert str(failures["next"]) == "next: not run, nan failed"
    assert not (tmp_path / "x").exists()


def test_a_killed_worker_fails_its_run_alone_and_the_others_are_kept(tmp_path):
    tasks = [Task("a", lambda: _write(tmp_path / "a")), Task("killed", _die),
             Task("b", lambda: _write(tmp_path / "b")), Task("nan", _fail),
             Task("c", lambda: _write(tmp_path / "c"))]
    done = []
    failures = run_tasks(tasks, Placement(2, 1), on_done=lambda t: done.append(t.name))
    assert {k: str(v) for k, v in failures.items()} == {
        "killed": "its worker process killed by signal 9 (SIGKILL)",
        "nan": "FloatingPointError: the training loss is nan at epoch 3"}
    assert sorted(done) == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    with pytest.raises(Exception) as raised:
        raise_failures("run x", failures, len(tasks))
    # listed as they failed: which of the two ends first is the host's timing
    listed = ["killed: its worker process killed by signal 9 (SIGKILL)",
              "nan: FloatingPointError: the training loss is nan at epoch 3"]
    assert str(raised.value) in (
        f"run x: 2 of 5 runs failed ({'; '.join(order)}); the others are kept: run the stage "
        "again" for order in (listed, listed[::-1]))


@pytest.mark.parametrize("execution, expected", [
    ({"workers": 0}, "execution.workers: 0 is not allowed; input should be greater than or "
                     "equal to 1"),
    ({"threads": 0}, "execution.threads: 0 is not allowed; input should be greater than or "
                     "equal to 1"),
    ({"threads": -2}, "execution.threads: -2 is not allowed"),
    ({"workers": 1.5}, "execution.workers: 1.5 is not allowed"),
    ({"procs": 2}, "execution.procs: unknown key; allowed: threads, workers, runs_per_gpu, "
                   "backend, address, deterministic"),
    ({"runs_per_gpu": 0}, "execution.runs_per_gpu: 0 is not allowed; input should be greater "
                          "than or equal to 1"),
    ({"backend": "dask"}, "execution.backend: 'dask' is not allowed; input should be 'local' or "
                          "'ray'"),
    ({"deterministic": "maybe"}, "execution.deterministic: 'maybe' is not allowed; input should "
                                 "be a valid boolean"),
])
def test_bad_execution_keys_are_one_line_and_exit_2(workspace, capsys, execution, expected):
    path = small_params(workspace, execution=execution)
    assert main(["check-params", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_more_workers_than_cores_are_warned_in_one_line_and_run(workspace, capsys):
    cores = os.cpu_count() or 1
    path = small_params(workspace, tracking={"enabled": False},
                        execution={"threads": 1, "workers": cores + 1})
    raw = yaml.safe_load(path.read_text())
    raw["levels"]["compression"] = [8]
    path.write_text(yaml.safe_dump(raw))
    for stage in ("prepare", "pretrain"):
        assert main([stage, "--params", str(path)]) == 0
    capsys.readouterr()
    assert main(["run", "--params", str(path), "--method", "magnitude"]) == 0
    err = capsys.readouterr().err
    assert (f"sparsebench: warning: execution.workers: {cores + 1} workers x 1 threads exceed "
            f"the {cores} cores here; the runs will share cores (same results, slower)") in err


def test_workers_of_two_threads_each_do_not_hang_after_the_stage_computed(tmp_path):
    """The stage's process computes on one thread and leaves the arithmetic digest of 2
    threads to a new interpreter: done in the stage, OpenMP's pool would start in it and each
    forked worker hang at its first two-thread op. Both stages finish, each worker on 2
    threads."""
    import subprocess
    import sys

    path = small_params(tmp_path, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["levels"]["compression"] = [8]
    raw["data"]["limit"] = 2000
    raw["methods"] = {"magnitude": raw["methods"]["magnitude"]}
    raw["tune"]["spaces"] = {}
    raw["execution"] = {"threads": 2, "workers": 1}
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "SPARSEBENCH_ROOT": str(tmp_path)}
    for stage in (["prepare"], ["pretrain"], ["run", "--method", "magnitude"]):
        done = subprocess.run([sys.executable, "-m", "sparsebench", *stage], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "runs/magnitude/c8/seed0/result.json").read_text())
    assert result["environment"]["threads"] == 2


def test_stages_of_two_threads_called_in_one_process_do_not_hang(tmp_path):
    """prepare, pretrain and run called in one Python process (a notebook, a script), on 2
    threads a run: the single pretrain is forked too, so the process never starts OpenMP's
    pool, and the run stage's forked workers (two levels) do not hang at their first
    two-thread op; the arithmetic digest of 2 threads comes from a new interpreter."""
    import subprocess
    import sys

    path = small_params(tmp_path, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["seeds"] = [0]
    raw["levels"]["compression"] = [8, 16]
    raw["data"]["limit"] = 500
    raw["methods"] = {"magnitude": raw["methods"]["magnitude"]}
    raw["tune"]["spaces"] = {}
    raw["execution"] = {"threads": 2, "workers": 1}
    path.write_text(yaml.safe_dump(raw))
    code = ("from sparsebench.pipeline.cli import main\n"
            "for stage in (['prepare'], ['pretrain'], ['run', '--method', 'magnitude']):\n"
            "    assert main(stage) == 0, stage\n")
    env = {**os.environ, "SPARSEBENCH_ROOT": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    from sparsebench.core.numerics import arithmetic_digest

    for level in ("c8", "c16"):
        result = json.loads((tmp_path / f"runs/magnitude/{level}/seed0/result.json").read_text())
        assert result["environment"]["threads"] == 2
        assert result["environment"]["arithmetic"] == arithmetic_digest(2) != arithmetic_digest(1)


def test_more_workers_than_gpus_times_runs_per_gpu_are_warned():
    from sparsebench.pipeline.workers import check_workers, default_workers

    assert default_workers(1, gpus=4, runs_per_gpu=2) == 8  # workers: null on 4 GPUs
    assert check_workers(8, 1, gpus=4, runs_per_gpu=2) is None
    assert check_workers(9, 1, gpus=4, runs_per_gpu=2) == (
        "execution.workers: 9 workers exceed the 4 GPUs x runs_per_gpu 2 here; 3 runs will "
        "share a GPU")
    assert check_workers(8, 4, gpus=8) is None  # on GPUs, 32 threads on 2 cores: not warned
