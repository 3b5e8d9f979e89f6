"""Runs side by side: the same weights alone or beside others, a dead worker fails its run only,
and the execution keys' bad values."""

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
from sparsebench.pipeline.workers import Task, raise_failures, run_tasks


def _tensors(path: Path) -> dict[str, bytes]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}  # noqa: SIM118


def _workspace(root: Path, workers: int) -> Path:
    root.mkdir()
    path = small_params(root, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["levels"]["compression"] = [32]
    raw["execution"] = {"threads": 1, "workers": workers, "fill_idle": False}
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


def _count(path: Path) -> None:
    """A filler that would run for minutes: it writes its progress, one line a step."""
    import time

    for step in range(3000):
        with path.open("a") as f:
            f.write(f"{step}\n")
        time.sleep(0.02)


def test_an_idle_worker_takes_filler_work_killed_once_the_last_task_ends(tmp_path):
    import time

    fills = iter([Task("fill-1", lambda: _write(tmp_path / "fill-1")),
                  Task("fill-2", lambda: _count(tmp_path / "fill-2")),
                  Task("fill-3", _die)])
    asked = []

    def fill():
        asked.append(1)
        return next(fills, None)

    done = []
    started = time.perf_counter()
    failures = run_tasks([Task("quick", lambda: _write(tmp_path / "quick")),
                          Task("slow", lambda: (time.sleep(3), _write(tmp_path / "slow")))],
                         workers=2, threads=1, on_done=lambda t: done.append(t.name), fill=fill)
    took = time.perf_counter() - started
    assert failures == {} and sorted(done) == ["quick", "slow"]  # fillers are not this call's
    assert (tmp_path / "fill-1").read_text() == "done"  # a finished filler gets a next one
    steps = (tmp_path / "fill-2").read_text().split()
    assert 10 < len(steps) < 2900, len(steps)  # it ran, and was killed with the last task
    assert took < 30, took
    assert len(asked) == 2  # the third filler was never started: no idle worker was left


def test_no_filler_while_tasks_wait_or_with_one_task_per_worker(tmp_path):
    calls = []
    run_tasks([Task(n, lambda n=n: _write(tmp_path / n)) for n in "abc"], workers=3, threads=1,
              fill=lambda: calls.append(1))  # returns None: asked at most once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    assert len(calls) <= 1


def test_a_killed_worker_fails_its_run_alone_and_the_others_are_kept(tmp_path):
    tasks = [Task("a", lambda: _write(tmp_path / "a")), Task("killed", _die),
             Task("b", lambda: _write(tmp_path / "b")), Task("nan", _fail),
             Task("c", lambda: _write(tmp_path / "c"))]
    done = []
    failures = run_tasks(tasks, workers=2, threads=1, on_done=lambda t: done.append(t.name))
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
    ({"procs": 2}, "execution.procs: unknown key; allowed: threads, workers"),
    ({"fill_idle": "maybe"}, "execution.fill_idle: 'maybe' is not allowed; input should be a "
                             "valid boolean"),
    ({"fill_idle": 2}, "execution.fill_idle: 2 is not allowed; input should be a valid boolean"),
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


def _two_methods(root: Path, fill: bool) -> Path:
    root.mkdir()
    path = small_params(root, tracking={"enabled": True})
    raw = yaml.safe_load(path.read_text())
    raw["levels"]["compression"] = [8, 32]
    raw["execution"] = {"threads": 1, "workers": 2, "fill_idle": fill}
    raw["data"]["limit"] = 3000
    raw["methods"] = {key: raw["methods"][key] for key in ("magnitude", "gmp")}
    # magnitude has one run, four retrain epochs long: the other worker idles from the start
    # and its filler (gmp c8 seed 0) has time to write a checkpoint, however loaded the host
    raw["methods"]["magnitude"].update(levels=[8], seeds=[0], retrain={"epochs": 4})
    raw["tune"]["spaces"] = {}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_an_idle_worker_starts_the_next_method_whose_stage_resumes_it_unchanged(
        tmp_path, monkeypatch, capsys):
    """run@magnitude's one run leaves a worker idle: it starts gmp's first run (killed with
    the stage, or finished); run@gmp then gives the same weights as without the filler, and
    its MLflow runs hold every epoch once."""
    from sparsebench.tracking.runs import client_for, tracking_uri

    outputs, histories = {}, {}
    for fill in (True, False):
        root = tmp_path / f"fill{fill}"
        path = _prepared(_two_methods(root, fill), monkeypatch)
        capsys.readouterr()
        assert main(["run", "--params", str(path), "--method", "magnitude"]) == 0
        said = capsys.readouterr().out
        assert ("run magnitude: an idle worker starts gmp c8 seed 0" in said) == fill, said
        if fill:
            assert list((root / "runs" / "gmp" / "c8").glob("*seed0*")), "the filler left nothing"
        assert main(["run", "--params", str(path), "--method", "gmp"]) == 0
        outputs[fill] = {str(p.relative_to(root)): _tensors(p)
                         for p in sorted(root.glob("runs/gmp/**/model.safetensors"))}
        client, experiment = client_for(tracking_uri(), "sparsebench-default")
        runs = client.search_runs([experiment], "tags.method_key = 'gmp' and "
                                                "tags.run_kind = 'seed'")
        assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
        histories[fill] = {
            r.data.tags["level_name"] + r.data.tags["seed"]: sorted(
                m.step for m in client.get_metric_history(r.info.run_id, "prune/val_accuracy"))
            for r in runs}
    assert len(outputs[True]) == 4 and outputs[True] == outputs[False]
    assert histories[True] == histories[False]
    assert all(steps == sorted(set(steps)) and steps for steps in histories[True].values())


def test_workers_of_two_threads_each_do_not_hang_after_the_stage_computed(tmp_path):
    """The stage's process computes the arithmetic digest of 2 threads (a torch op on two
    threads) before it forks: done there, OpenMP's pool would start in it and each forked
    worker hang at its first two-thread op. Both stages finish, each worker on 2 threads."""
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
