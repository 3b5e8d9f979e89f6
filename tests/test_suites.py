"""Every suite under pipelines/ (and the root one): its params validate, and its stages run
end to end in a smoke mode (synthetic data of the suite's image shape, one epoch or one
iteration, a few dozen samples, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, shrink_methods

from sparsebench.cli import main
from sparsebench.config import load_params
from sparsebench.data import DATASETS

SUITES = [ROOT, *sorted(p for p in (ROOT / "pipelines").iterdir()
                        if (p / "dvc.yaml").exists() and (p / "params.yaml").exists())]


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.name)
def test_suite_params_are_valid(suite):
    params, methods = load_params(suite / "params.yaml")
    assert params.suite == ("default" if suite == ROOT else suite.name)
    assert methods


def _smoke(params: dict) -> dict:
    spec = DATASETS[params["data"]["dataset"]]
    params.update(seeds=params["seeds"][:1], device="cpu")
    params["data"] = {"dataset": "synthetic", "val_size": 32, "limit": 64,
                      "synthetic_shape": list(spec.shape), "synthetic_classes": 10}
    for phase in ("pretrain", "retrain"):
        params[phase].update(epochs=1, batch_size=32)
    for cfg in shrink_methods(params["methods"]).values():
        if "retrain" in cfg and cfg["retrain"].get("epochs"):
            cfg["retrain"]["epochs"] = 1
    params["evaluate"] = {"latency_batch_sizes": []}
    params["tracking"] = {"enabled": False}
    return params


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES[1:], ids=lambda p: p.name)
def test_suite_stages_run_in_smoke_mode(suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    raw = _smoke(yaml.safe_load((suite / "params.yaml").read_text()))
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    _, methods = load_params("params.yaml")
    for stage in ("prepare", "pretrain"):
        assert main([stage]) == 0
    for key in methods:
        for stage in ("prune", "retrain", "evaluate"):
            assert main([stage, "--method", key]) == 0, (stage, key)
    assert main(["report"]) == 0
    for key, cfg in methods.items():
        if not hasattr(cfg, "target_sparsity") and key != "dense":
            continue  # sparse training: its sparsity is an outcome, not a target
        layers = json.loads(Path("evaluation", f"{key}.json").read_text())["layers"]["0"]
        for name, figures in layers.items():
            expected = getattr(cfg, "target_sparsity", 0.0)
            if getattr(cfg, "layer_sparsity", None) and name in cfg.layer_sparsity:
                expected = cfg.layer_sparsity[name]
            if getattr(cfg, "layer_types", "all") == "conv" and name == "fc":
                expected = 0.0
            assert figures["sparsity"] == pytest.approx(expected, abs=0.01), (key, name)
