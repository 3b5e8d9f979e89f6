"""Resume after a kill: a training stage killed with SIGKILL at a random epoch and started again
ends with the weights and curves of a run never interrupted, bit for bit (CPU, same seed)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import Recording, small_params, write_calibration
from safetensors import safe_open
from torch import nn

from sparsebench.core.checkpoints import EpochCheckpoint
from sparsebench.core.train import seed_everything
from sparsebench.methods import METHODS, build_method
from sparsebench.methods.base import Context
from sparsebench.pipeline.cache import StageWork
from sparsebench.pipeline.cli import main

# One method of each family, and the ones with their own loops.
CASES = {
    "gmp": {"target_sparsity": 0.8, "epochs": 3, "start_epoch": 0, "end_epoch": 2,
            "frequency": 3, "batch_size": 32},
    "admm": {"target_sparsity": 0.8, "iterations": 3, "epochs_per_iteration": 2,
             "rho": 0.01, "rho_growth": 2.0, "batch_size": 32},
    "sas_admm": {"target_sparsity": 0.8, "iterations": 4, "M": 5, "k0": 2, "last": 1,
                 "batch_size": 32},
    "grda": {"epochs": 3, "lr": 0.05, "c": 0.01, "mu": 0.6, "batch_size": 32},
    "linbreg": {"epochs": 3, "lr": 0.05, "lam": 0.1, "momentum": 0.9, "batch_size": 32,
                "init_density": 0.3},
    "adabreg": {"epochs": 3, "lr": 0.01, "lam": 0.1, "batch_size": 32},
}


def _run(key: str, data: dict, checkpoint: EpochCheckpoint) -> tuple[nn.Module, list[dict]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    method = build_method(key, METHODS[key].Params(method=key, **CASES[key]))
    ctx = Context(train=data["train"], val=data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, checkpoint=checkpoint)
    curves = method.prune(model, ctx)
    return model, [{k: v for k, v in row.items() if k != "seconds"} for row in curves]


@pytest.mark.parametrize("key", CASES)
def test_resume_from_every_saved_epoch_gives_the_uninterrupted_result(key, tiny_data, tmp_path):
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    model, curves = _run(key, tiny_data, Recording(tmp_path / "full.pt", snapshots))
    saved = sorted(snapshots.iterdir())
    assert len(saved) >= 3  # one per epoch (or SAS-ADMM iteration)
    for snapshot in saved:
        path = tmp_path / "resume.pt"
        shutil.copy(snapshot, path)
        resumed, resumed_curves = _run(key, tiny_data, EpochCheckpoint(path))
        assert resumed_curves == curves, snapshot.name
        for (name, a), (_, b) in zip(model.state_dict().items(),
                                     resumed.state_dict().items(), strict=True):
            assert torch.equal(a, b), f"{key}: {name} differs after resuming {snapshot.name}"


def test_a_checkpoint_is_restored_only_into_the_fit_call_that_saved_it(tmp_path):
    checkpoint = EpochCheckpoint(tmp_path / "c.pt")
    checkpoint.save({"tag": "iteration 2", "epoch": 1})
    again = EpochCheckpoint(tmp_path / "c.pt")
    assert again.take("iteration 1") is None
    assert again.take("iteration 2")["epoch"] == 1
    assert again.take("iteration 2") is None  # once only
    assert not list(tmp_path.glob(".*"))  # no temp file left


def test_stage_work_starts_over_when_the_fingerprint_changes(tmp_path):
    target = tmp_path / "runs" / "gmp" / "prune"
    with pytest.raises(RuntimeError), StageWork(target, "a") as work:
        work.finish("seed0", lambda path: (path / "x").write_text("0"))
        raise RuntimeError("killed")
    assert not target.exists()
    with pytest.raises(RuntimeError), StageWork(target, "a") as work:
        assert work.done("seed0")  # same fingerprint: kept
        raise RuntimeError("killed")
    with StageWork(target, "b") as work:
        assert not work.done("seed0")  # another config: started over
        work.finish("seed0", lambda path: (path / "x").write_text("1"))
    assert (target / "seed0" / "x").read_text() == "1"
    assert sorted(p.name for p in target.parent.iterdir()) == ["prune"]
    assert (target / "FINGERPRINT").read_text() == "b"  # what `finished` reads
    assert StageWork(target, "b").finished(["seed0"])
    assert not StageWork(target, "a").finished(["seed0"])  # another config
    assert not StageWork(target, "b").finished(["seed0", "seed1"])  # a seed missing


# SIGKILL of a real stage process (and so of its workers). Each case: the method it trains.
KILLS = ["magnitude", "admm", "grda"]


def _workspace(root: Path) -> Path:
    root.mkdir()
    path = small_params(root, tracking={"enabled": False})
    params = yaml.safe_load(path.read_text())
    params["seeds"] = [0, 1]
    params["data"]["limit"] = 3000  # epochs long enough to be killed in the middle
    params["retrain"]["epochs"] = 4
    params["levels"]["compression"] = [8]
    params["execution"] = {"threads": 1, "workers": 2}
    params["budget"] = None
    params["methods"] = {
        "magnitude": {},
        "admm": {"iterations": 3, "epochs_per_iteration": 2, "rho": 0.01, "rho_growth": 2.0,
                 "batch_size": 32},
        "grda": {"epochs": 5, "lr": 0.05, "c": 0.005, "mu": 0.6, "batch_size": 32},
    }
    spaces = params["tune"]["spaces"]
    params["tune"]["spaces"] = {k: v for k, v in spaces.items() if k in params["methods"]}
    path.write_text(yaml.safe_dump(params))
    return root


def _run_outputs(root: Path, key: str) -> dict[str, object]:
    out = {}
    for seed_dir in sorted((root / "runs" / key / "c8").iterdir()):
        for name in ("model", "masks"):  # tensors bit for bit, and the metadata
            out[f"{seed_dir.name}/{name}"] = _safetensors(seed_dir / f"{name}.safetensors")
        curves = json.loads((seed_dir / "curves.json").read_text())
        out[f"{seed_dir.name}/curves"] = {
            phase: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
            for phase, rows in curves.items()}
    return out


def _safetensors(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}  # noqa: SIM118
        return tensors, f.metadata()


def _metrics(root: Path, key: str) -> dict:
    summary = json.loads((root / "evaluation" / f"{key}.json").read_text())
    return {k: v for k, v in summary["levels"]["c8"]["mean"].items()
            if "seconds" not in k and not k.startswith("latency")}  # timings differ run to run


@pytest.mark.parametrize("key", KILLS)
def test_sigkill_at_a_random_epoch_then_rerun_matches_an_uninterrupted_run(
        key, tmp_path, monkeypatch):
    runs = {}
    for name in ("uninterrupted", "killed"):
        root = _workspace(tmp_path / name)
        monkeypatch.chdir(root)
        monkeypatch.setenv("SPARSEBENCH_ROOT", str(root))
        if key == "grda":
            write_calibration(root, root / "params.yaml", "grda", 0.005)
        for step in ("prepare", "pretrain"):
            assert main([step, "--params", "params.yaml"]) == 0
        runs[name] = root
    monkeypatch.chdir(runs["uninterrupted"])
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(runs["uninterrupted"]))
    assert main(["run", "--params", "params.yaml", "--method", key]) == 0

    root = runs["killed"]
    epochs_per_run = {"magnitude": 4, "admm": 3 + 4, "grda": 5 + 4}[key]
    kill_after = random.Random(key).randint(1, 2 * epochs_per_run - 2)
    env = {**os.environ, "SPARSEBENCH_ROOT": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", "run", "--params",
                             "params.yaml", "--method", key], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = 0
    for line in proc.stdout:
        seen += " epoch " in line
        if seen == kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the stage ended before it could be killed"
    level = root / "runs" / key / "c8"
    finished = [d for d in level.iterdir() if not d.name.startswith(".")]
    assert all((d / "result.json").exists() for d in finished)  # nothing half-written in place
    assert list(level.glob(".seed*.work")), "nothing to resume"

    monkeypatch.chdir(root)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(root))
    assert main(["run", "--params", "params.yaml", "--method", key]) == 0
    assert not list(level.glob(".*"))
    assert _run_outputs(root, key) == _run_outputs(runs["uninterrupted"], key)
    assert _metrics(root, key) == _metrics(runs["uninterrupted"], key)


def test_every_module_is_result_code_or_not_by_its_folder():
    """A module outside both sets would be neither keyed nor explicitly left out."""
    import sparsebench
    from sparsebench.pipeline.cache import NOT_RESULT_CODE, RESULT_CODE, layer_of

    root = Path(sparsebench.__file__).parent
    assert not set(RESULT_CODE) & set(NOT_RESULT_CODE)
    layers = {layer_of(f.relative_to(root).as_posix()) for f in root.rglob("*.py")}
    assert layers <= set(RESULT_CODE) | set(NOT_RESULT_CODE), layers - set(RESULT_CODE) - set(
        NOT_RESULT_CODE)
    assert all((root / name).exists() for name in (*RESULT_CODE, *NOT_RESULT_CODE))


@pytest.mark.parametrize(("where", "keeps"), [("pipeline", True), ("report", True),
                                               ("tuning", True), ("core", False),
                                               ("methods", False), ("util", False)])
def test_a_new_module_keeps_the_cached_runs_only_outside_the_result_layers(tmp_path, where,
                                                                           keeps):
    import sparsebench
    from sparsebench.pipeline.cache import digest_of

    copy = tmp_path / "sparsebench"
    shutil.copytree(Path(sparsebench.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = digest_of(copy)
    (copy / where / "added.py").write_text("def twice(x):\n    return 2 * x\n")
    assert (digest_of(copy) == before) is keeps


def test_the_run_digest_reads_code_not_docstrings_comments_or_layout():
    from sparsebench.pipeline.cache import code_of

    source = b'''"""Module."""
import torch


class A:
    """A class."""

    def f(self, x):  # a comment
        """Twice x."""
        return 2 * x


def g():
    """Only a docstring."""
'''
    edited = b'''"""The module, reworded."""
import torch
class A:
    """Reworded."""
    def f(self, x):
        return 2 * x   # another comment
def g():
    """Another docstring."""
'''
    assert code_of(source) == code_of(edited)
    for change in (b"return 3 * x", b"return 2 * x + 0"):
        assert code_of(source.replace(b"return 2 * x", change)) != code_of(source)
    assert code_of(source.replace(b"import torch", b"import math")) != code_of(source)
    # a string that is not the first statement is code
    assert code_of(source + b'x = "text"\n') != code_of(source + b'x = "other"\n')
