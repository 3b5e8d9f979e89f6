"""Shared fixtures: tiny models and data, and a shrunk copy of the real params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


@pytest.fixture
def tiny_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A learnable 4-class problem on 1x4x4 inputs: class prototypes plus noise."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 1, 4, 4, generator=g) * 2

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 4, (n,), generator=g)
        return protos[y] + 0.5 * torch.randn(n, 1, 4, 4, generator=g), y

    return {"train": draw(256), "val": draw(64)}


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
