"""Runs side by side: the same weights alone or beside others, a dead worker fails its run only,
and the execution keys' bad values."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml
from conftest import small_params
from safetensors import safe_open

from sparsebench.cli import main
from sparsebench.workers import Task, raise_failures, run_tasks


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


@pytest.mark.parametrize("key", ["gmp", "admm"])
def test_a_run_gives_the_same_weights_alone_or_beside_others(key, tmp_path, monkeypatch):
    outputs = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        path = _workspace(root, workers)
        monkeypatch.chdir(root)
        monkeypatch.setenv("SPARSEBENCH_ROOT", str(root))
        for stage in ("prepare", "pretrain"):
            assert main([stage, "--params", str(path)]) == 0
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
    with pytest.raises(Exception, match=r"^run x: 2 of 5 runs failed \(killed: its worker "
                                        r"process killed by signal 9 \(SIGKILL\); nan: "):
        raise_failures("run x", failures, len(tasks))


@pytest.mark.parametrize("execution, expected", [
    ({"workers": 0}, "execution.workers: 0 is not allowed; input should be greater than or "
                     "equal to 1"),
    ({"threads": 0}, "execution.threads: 0 is not allowed; input should be greater than or "
                     "equal to 1"),
    ({"threads": -2}, "execution.threads: -2 is not allowed"),
    ({"workers": 1.5}, "execution.workers: 1.5 is not allowed"),
    ({"procs": 2}, "execution.procs: unknown key; allowed: threads, workers"),
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
