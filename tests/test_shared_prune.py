"""A prune phase shared across levels (admm_l1, SAS-ADMM): trained once per seed in
``runs/<key>/prune/seed<s>``, finished at each level; the same weights, bit for bit, as runs that
train their own; reused when a level is added; keyed by what it reads; resumable; and a failed
trajectory fails the runs that need it, with one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import small_params
from safetensors import safe_open

from sparsebench.data import load_splits
from sparsebench.pipeline.cache import run_fingerprint, shared_fingerprint
from sparsebench.pipeline.cli import main
from sparsebench.pipeline.executor import run_tasks
from sparsebench.pipeline.sweep import method_runs
from sparsebench.pipeline.tasks import Placement, Task
from sparsebench.run import TRAJECTORY, run, save_run_model, shared_prune
from sparsebench.suite.load import load_params
from sparsebench.suite.plan import DATA_FILE

METHODS = {
    "admm_l1": {"lam": 0.001, "rho": 0.01, "rho_growth": 1.5, "rho_max": 0.1, "iterations": 3,
                "epochs_per_iteration": 1, "batch_size": 32,
                "optimizer": {"name": "adam", "lr": 0.001, "schedule": "constant"}},
    "sas_admm": {"iterations": 4, "M": 3, "k0": 2, "last": 2, "batch_size": 32, "v": 50},
    "magnitude": {},
}


def _tensors(path: Path) -> dict[str, bytes]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Prepared data and pretrained models, two seeds (copied by each test)."""
    root = tmp_path_factory.mktemp("shared")
    path = small_params(root, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["levels"]["compression"] = [8, 32]
    raw["data"]["limit"] = 512
    raw["execution"] = {"threads": 1, "workers": 2}
    raw["budget"] = None
    raw["methods"] = {k: dict(v) for k, v in METHODS.items()}
    raw["tune"]["spaces"] = {k: v for k, v in raw["tune"]["spaces"].items() if k in METHODS}
    path.write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("SPARSEBENCH_ROOT", str(root))
        for stage in ("prepare", "pretrain"):
            assert main([stage, "--params", str(path)]) == 0
    return root


@pytest.fixture
def workspace(prepared, tmp_path, monkeypatch) -> Path:
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(prepared, root, ignore=shutil.ignore_patterns("mlruns", ".cache"))
    monkeypatch.chdir(root)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(root))
    return root


def _set_levels(root: Path, levels: list[float]) -> None:
    path = root / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["levels"]["compression"] = levels
    path.write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize("key", ["admm_l1", "sas_admm"])
def test_levels_share_one_prune_per_seed_with_the_weights_of_runs_that_train_their_own(
        key, workspace, capsys, tmp_path):
    _set_levels(workspace, [8])
    assert main(["run", "--params", "params.yaml", "--method", key]) == 0
    out = capsys.readouterr().out
    assert "2 shared prune phases" in out and f"{key} prune seed 1: shared" in out
    trajectory = workspace / "runs" / key / "prune" / "seed0"
    record = (trajectory / TRAJECTORY).read_text()
    assert not (trajectory / "masks.safetensors").exists()  # the level's masks come later

    _set_levels(workspace, [8, 32])  # a new level: its runs finish the same trajectories
    assert main(["run", "--params", "params.yaml", "--method", key]) == 0
    out = capsys.readouterr().out
    assert "2 cached, 2 to train" in out and "shared prune" not in out
    assert (trajectory / TRAJECTORY).read_text() == record

    params, methods = load_params(workspace / "params.yaml")
    planned = method_runs(params, methods, key)
    assert len(planned) == 4 and {p.spec.shared_prune for p in planned} == {
        Path("runs", key, "prune", f"seed{s}") for s in (0, 1)}
    data = load_splits(DATA_FILE, ("train", "val", "test"))
    for p in planned:  # the per-run form: the run trains its own prune phase
        alone = dataclasses.replace(p.spec, shared_prune=None)
        outcome = run(alone, data, torch.device("cpu"), work=tmp_path / p.name)
        save_run_model(tmp_path / "alone" / p.name, outcome.model, outcome.curves)
        assert _tensors(tmp_path / "alone" / p.name / "model.safetensors") == _tensors(
            p.out / "model.safetensors"), p.name
        assert _tensors(tmp_path / "alone" / p.name / "masks.safetensors") == _tensors(
            p.out / "masks.safetensors"), p.name
        shared = json.loads((p.out / "curves.json").read_text())
        assert [{k: v for k, v in r.items() if k != "seconds"} for r in shared["prune"]] == [
            {k: v for k, v in r.items() if k != "seconds"} for r in outcome.curves["prune"]]
        result = json.loads((p.out / "result.json").read_text())
        assert result["seconds"]["shared"] == pytest.approx(
            sum(r["seconds"] for r in shared["prune"]))
        assert result["epochs"]["prune"] > 0  # the budget counts the run's whole schedule


def test_the_trajectory_is_keyed_by_what_it_reads(workspace):
    params, methods = load_params(workspace / "params.yaml")
    c8, c32 = (p for p in method_runs(params, methods, "sas_admm") if p.spec.seed == 0)
    assert shared_fingerprint(params, c8) == shared_fingerprint(params, c32)
    assert run_fingerprint(params, c8) != run_fingerprint(params, c32)
    retrained = dataclasses.replace(c8, spec=dataclasses.replace(
        c8.spec, retrain=c8.spec.retrain.model_copy(update={"epochs": 9})))
    assert shared_fingerprint(params, retrained) == shared_fingerprint(params, c8)
    other = dataclasses.replace(c8, spec=dataclasses.replace(
        c8.spec, method=c8.spec.method.model_copy(update={"lam": 0.01})))
    assert shared_fingerprint(params, other) != shared_fingerprint(params, c8)
    seed1 = next(p for p in method_runs(params, methods, "sas_admm") if p.spec.seed == 1)
    assert shared_fingerprint(params, seed1) != shared_fingerprint(params, c8)
    # plain magnitude (and admm) read the level in their prune phase: nothing shared
    assert all(p.spec.shared_prune is None for p in method_runs(params, methods, "magnitude"))


def test_a_progressive_series_or_a_support_mask_trains_its_own_prune(workspace):
    path = workspace / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["sas_admm"]["progressive"] = True
    raw["methods"]["admm_l1"]["final_mask"] = "support"
    path.write_text(yaml.safe_dump(raw))
    params, methods = load_params(path)
    for key in ("sas_admm", "admm_l1"):
        assert all(p.spec.shared_prune is None for p in method_runs(params, methods, key))


def test_a_trajectory_cut_by_a_kill_resumes_to_the_uninterrupted_one(workspace, tmp_path):
    params, methods = load_params(workspace / "params.yaml")
    p = next(iter(method_runs(params, methods, "sas_admm")))
    data = load_splits(DATA_FILE, ("train", "val"))
    cpu = torch.device("cpu")

    def killed(phase: str, row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shared_prune(p.spec, data, cpu, tmp_path / "cut" / "seed0", fingerprint="f",
                     on_epoch=killed)
    assert not (tmp_path / "cut" / "seed0").exists()
    assert (tmp_path / "cut" / ".seed0.work" / "prune.resume.pt").exists()
    resumed = shared_prune(p.spec, data, cpu, tmp_path / "cut" / "seed0", fingerprint="f")
    whole = shared_prune(p.spec, data, cpu, tmp_path / "whole" / "seed0", fingerprint="f")
    assert resumed["epochs"] == whole["epochs"] > 0
    assert not (tmp_path / "cut" / ".seed0.work").exists()
    assert _tensors(tmp_path / "cut" / "seed0" / "model.safetensors") == _tensors(
        tmp_path / "whole" / "seed0" / "model.safetensors")


def _write(path: Path) -> None:
    path.write_text("done")


def _needs(path: Path, out: Path) -> None:
    out.write_text(path.read_text())


def _fails() -> None:
    raise FloatingPointError("diverged")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_task_waits_for_the_one_it_reads_and_fails_when_that_one_failed(workers, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    tasks = [Task("fails", _fails), Task("writes", lambda: _write(a)),
             Task("needs failed", lambda: _write(tmp_path / "never"), after="fails"),
             Task("reads", lambda: _needs(a, b), after="writes"),
             Task("chained", lambda: _write(tmp_path / "never2"), after="needs failed")]
    failures = run_tasks(tasks, Placement(workers, 1, in_process=workers == 1))
    assert b.read_text() == "done"
    assert not (tmp_path / "never").exists() and not (tmp_path / "never2").exists()
    assert set(failures) == {"fails", "needs failed", "chained"}
    assert str(failures["needs failed"]) == "needs failed: not run, fails failed"
    assert str(failures["chained"]) == "chained: not run, needs failed failed"


def test_a_task_after_one_not_listed_before_it_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'b' runs after 'a', which is not an earlier task"):
        run_tasks([Task("b", lambda: None, after="a"), Task("a", lambda: None)], Placement(2, 1))


def test_method_variants_trains_each_variants_own_prune_phase(workspace):
    """benchmarks/method_variants.py plans the pipeline's runs: its variant of lam must not be
    finished from the pipeline's trajectory (the params.yaml value's), and its params.yaml run
    must be the pipeline's run."""
    import shutil
    import subprocess
    import sys

    _set_levels(workspace, [8])
    assert main(["run", "--params", "params.yaml", "--method", "sas_admm"]) == 0
    script = Path(__file__).parents[1] / "benchmarks" / "method_variants.py"
    done = subprocess.run([sys.executable, str(script), "--method", "sas_admm", "--seeds", "0",
                           "--variant", "lam=0.05", "--workers", "1", "--out", "rows.json"],
                          cwd=workspace, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    scratch = Path(done.stdout.rsplit("runs: ", 1)[1].strip())

    def prune_rows(run: Path) -> list[dict]:
        rows = json.loads((run / "curves.json").read_text())["prune"]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    pipeline = workspace / "runs" / "sas_admm" / "c8" / "seed0"
    assert prune_rows(scratch / "params.yaml" / "c8" / "seed0") == prune_rows(pipeline)
    assert prune_rows(scratch / "lam=0.05" / "c8" / "seed0") != prune_rows(pipeline)
    rows = {r["method"]: r for r in json.loads((workspace / "rows.json").read_text())}
    result = json.loads((pipeline / "result.json").read_text())
    assert rows["params.yaml"]["test_accuracy"] == result["figures"]["test_accuracy"]
    shutil.rmtree(scratch)  # the script's scratch directory, outside the test's
