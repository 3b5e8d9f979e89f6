"""Shared fixtures: tiny models and data, and a shrunk copy of the real params.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from sparsebench.core.checkpoints import EpochCheckpoint

ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread in this process, before any test runs a tensor operation: a parallel
# operation starts GNU OpenMP's thread pool, and a process forked after that (the pipeline's
# workers, forked by the stages the tests call in-process) hangs at its own first parallel
# operation, as a stage's workers would if the stage computed on several threads. The
# workers set their own thread counts; what needs several threads here runs in a child.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _gradual_underflow():
    """Every test starts and ends with subnormals kept (IEEE) in the main thread: the CLI's
    training stages, called in-process by some tests, flush them (`sparsebench.core.numerics`), and
    hypothesis refuses to draw floats in a process that flushes. The expected values are the
    same either way (a run of tests/methods, test_methods, test_train, test_resume, optim and
    test_sparsity with the flush on from the session's start)."""
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def prototype_data(n_train: int, n_val: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A learnable 4-class problem on 1x4x4 inputs: class prototypes plus noise."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 1, 4, 4, generator=g) * 2

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 4, (n,), generator=g)
        return protos[y] + 0.5 * torch.randn(n, 1, 4, 4, generator=g), y

    return {"train": draw(n_train), "val": draw(n_val)}


@pytest.fixture
def tiny_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return prototype_data(256, 64)


class Recording(EpochCheckpoint):
    """Keeps a copy of every state saved: the points a kill could have resumed from."""

    def __init__(self, path: Path, snapshots: Path):
        super().__init__(path)
        self.snapshots = snapshots

    def save(self, state: dict) -> None:
        super().save(state)
        shutil.copy(self.path, self.snapshots / f"{len(list(self.snapshots.iterdir())):03d}.pt")


SHRINK = {"iterations": 2, "epochs": 2, "end_epoch": 1, "start_epoch": 0, "frequency": 2,
          "M": 2, "k0": 1, "last": 1, "epochs_per_iteration": 1, "batch_size": 32}


def shrink_methods(methods: dict) -> dict:
    """Each method's schedule cut to a step or two (the keys it has)."""
    for cfg in methods.values():
        cfg.update({k: v for k, v in SHRINK.items() if k in cfg})
    return methods


def small_params(tmp_path: Path, **overrides) -> Path:
    """The real params.yaml, shrunk: synthetic data, short schedules, CPU, two seeds."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["seeds"] = [0, 1]
    params["device"] = "cpu"
    params["data"].update(dataset="synthetic", val_size=64)
    params["pretrain"].update(epochs=2, batch_size=32)
    params["retrain"].update(epochs=1, batch_size=32)
    shrink_methods(params["methods"])
    params["evaluate"] = {"latency_batch_sizes": [1, 256], "latency_repeats": 5}
    for key, value in overrides.items():
        params[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def write_calibration(root: Path, params_path: Path, key: str, value: float) -> Path:
    """A calibration of ``methods.<key>`` that puts every level at strength ``value`` (as if
    the search had hit each one), so that the method's runs can go without a search."""
    from sparsebench.core.levels import level_name
    from sparsebench.methods import method_class
    from sparsebench.pipeline.calibrate import (
        CalibrationFile,
        LevelResult,
        SeedCalibration,
        config_digest,
    )
    from sparsebench.suite.load import load_params

    params, methods = load_params(params_path)
    method = methods[key]
    strength = method_class(key, method.model_dump()).strength
    levels = params.levels.ratios(method.levels)
    entry = SeedCalibration(history=[], levels={
        level_name(lv): LevelResult(level=lv, status="reached", value=value, compression=lv)
        for lv in levels})
    found = CalibrationFile(
        method=key, strength=strength, config_digest=config_digest(key, method),
        tolerance=params.levels.tolerance, trials=1, seeds=dict.fromkeys(params.seeds, entry))
    path = root / "calibrated" / f"{key}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(found.model_dump()))
    return path


@pytest.fixture(scope="session")
def pretrained_workspace(tmp_path_factory) -> Path:
    """A workspace with prepared synthetic data, the pretrained models and an empty MLflow
    store (made once: creating the store's tables takes seconds)."""
    import os

    from sparsebench.pipeline.cli import main
    from sparsebench.tracking.runs import client_for, tracking_uri

    path = tmp_path_factory.mktemp("pretrained")
    params = small_params(path, tracking={"enabled": False})
    cwd, root = Path.cwd(), os.environ.get("SPARSEBENCH_ROOT")
    os.chdir(path)
    os.environ["SPARSEBENCH_ROOT"] = str(path)
    try:
        for stage in ("prepare", "pretrain"):
            assert main([stage, "--params", str(params)]) == 0
        client_for(tracking_uri(), "store-created")
    finally:
        os.chdir(cwd)
        if root is None:
            os.environ.pop("SPARSEBENCH_ROOT")
        else:
            os.environ["SPARSEBENCH_ROOT"] = root
    return path


@pytest.fixture
def tune_workspace(tmp_path, monkeypatch, pretrained_workspace):
    """A fresh workspace (its own MLflow store and study database) holding a copy of the
    pretrained models; returns a function writing its params.yaml with tune: overrides."""
    import shutil

    for part in ("data", "runs", "mlruns"):
        shutil.copytree(pretrained_workspace / part, tmp_path / part)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def write(methods: dict | None = None, tracking: bool = True, **tune) -> Path:
        path = small_params(tmp_path, tracking={"enabled": tracking})
        raw = yaml.safe_load(path.read_text())
        raw["tune"].update({"trials": 4, "heartbeat_interval": 1, "grace_period": 2,
                            "spaces": {"gmp": {"optimizer.lr": {"low": 0.005,
                                                                  "high": 0.05}}}})
        raw["tune"].update(tune)
        raw["budget"] = None  # the tests lengthen a method's schedule to slow its trials
        for key, cfg in (methods or {}).items():
            raw["methods"][key].update(cfg)
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, its tables made once by MLflow itself (its ~100 schema
    migrations take about 6 s a store here); `seed_store` copies it."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def seed_store(template: Path, db: Path) -> Path:
    """Put a copy of the empty store at ``db`` (what a first use would create there). Not for
    tests of a fresh store's creation (two writers at once): those keep it absent."""
    import shutil

    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)
    return db


@pytest.fixture
def tracked_workspace(workspace, store_template):
    """`workspace` with its MLflow store in place, empty."""
    seed_store(store_template, workspace / "mlruns" / "mlflow.db")
    return workspace


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty workspace as the working directory and repository root (stores inside)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def pytest_collection_modifyitems(config, items):
    """The Ray tests last: a Ray driver leaves gRPC threads in this process, and a worker the
    forked pool starts after them could wait forever on a lock one of them held at the fork."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_ray.py"))
