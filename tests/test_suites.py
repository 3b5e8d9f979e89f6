"""Every suite under pipelines/ (and the root one): its params validate, and its stages run
end to end in a smoke mode (synthetic data of the suite's image shape, one epoch or one
iteration, a few dozen samples, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, shrink_methods, write_calibration

from sparsebench.data import DATASETS
from sparsebench.data.example import write_image_folder
from sparsebench.data.folders import FOLDER_DATASETS
from sparsebench.methods import method_class
from sparsebench.pipeline.cli import main
from sparsebench.suite.load import load_params

SUITES = [ROOT, *sorted(p for p in (ROOT / "pipelines").iterdir()
                        if (p / "dvc.yaml").exists() and (p / "params.yaml").exists())]


PROJECTS = [ROOT, *sorted(p for p in (ROOT / "pipelines").iterdir() if (p / "dvc.yaml").exists())]


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name)
def test_every_params_key_a_stage_lists_is_in_its_params_file(project):
    """Each suite is a DVC project of its own, and `dvc repro` refuses a stage whose params:
    key its params file lacks (the smoke runs below call the CLI, not DVC, so they would pass)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        assert Path(repo.root_dir) == project
        for stage in repo.index.stages:
            for dep in stage.params:
                dep.get_hash()  # MissingParamsError: "Parameters '...' are missing from ..."


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.name)
def test_suite_params_are_valid(suite):
    params, methods = load_params(suite / "params.yaml")
    assert params.suite == ("default" if suite == ROOT else suite.name)
    assert methods


def _smoke(params: dict, tmp_path: Path) -> dict:
    params.update(seeds=params["seeds"][:1], device="cpu")
    if params["data"]["dataset"] in FOLDER_DATASETS:  # a generated folder, streamed
        crop = 64 if "alexnet" in params["model"]["name"] else 32  # AlexNet's smallest input
        root = write_image_folder(tmp_path / "images", classes=3, train_per_class=12,
                                  val_per_class=3, sizes=(crop + 4, crop + 16))
        params["data"].update(dir=str(root), val_size=8, limit=24, loader_workers=1,
                              crop=crop, resize=crop + 4)
    else:
        spec = DATASETS[params["data"]["dataset"]]
        params["data"] = {"dataset": "synthetic", "val_size": 32, "limit": 64,
                          "synthetic_shape": list(spec.shape), "synthetic_classes": 10,
                          "augment": params["data"].get("augment", "none")}  # tested
    for phase in ("pretrain", "retrain"):
        params[phase].update(epochs=1, batch_size=32)
    for cfg in shrink_methods(params["methods"]).values():
        if "retrain" in cfg and cfg["retrain"].get("epochs"):
            cfg["retrain"]["epochs"] = 1
    params["evaluate"] = {"latency_batch_sizes": []}
    params["tracking"] = {"enabled": False}
    params["budget"] = None
    params["execution"] = {**params.get("execution", {}), "threads": 1}  # 4 on 2 cores: 4x slower
    return params


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES[1:], ids=lambda p: p.name)
def test_suite_stages_run_in_smoke_mode(suite, tmp_path, monkeypatch):
    if suite.name == "alexnet-imagenet":  # 61M weights: each run's checkpoint alone takes minutes
        pytest.skip("AlexNet's smoke run takes over 10 minutes on a 2-core CPU; its params, "
                    "stages and model are checked by the other tests")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    raw = _smoke(yaml.safe_load((suite / "params.yaml").read_text()), tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    _, methods = load_params("params.yaml")
    for stage in ("prepare", "pretrain"):
        assert main([stage]) == 0
    for key, cfg in methods.items():
        strength = method_class(key, cfg.model_dump()).strength
        if strength:  # a calibration at the configured strength: the smoke run needs none
            write_calibration(tmp_path, tmp_path / "params.yaml", key, getattr(cfg, strength))
        assert main(["run", "--method", key]) == 0, key
    assert main(["report"]) == 0
    checked = []
    for key, cfg in methods.items():
        if method_class(key, cfg.model_dump()).kind() != "target":
            continue  # sparse training: its sparsity is an outcome, not a target
        if getattr(cfg, "layer_types", "all") != "all":
            continue  # SAS-ADMM pruning the conv layers only: the level holds over those
        for run in json.loads(Path("evaluation", f"{key}.json").read_text())["runs"]:
            assert run["figures"]["compression"] == pytest.approx(run["level"],
                                                                        rel=0.01), key
            checked.append(run["level"])
    levels = raw["levels"].get("compression") or [1 / (1 - v) for v in raw["levels"]["sparsity"]]
    assert sorted(set(checked)) == pytest.approx(sorted(levels))  # every level, checked


def test_every_suite_has_the_root_suites_stages():
    """One definition of the stages: each suite's dvc.yaml repeats the root's stages and plots
    exactly, its code path (``vars: code``) apart; a suite that needs another stage says so
    here, and the tune pipeline is a pipeline of its own. An image-folder suite's prepare
    stage runs on every repro (the folder lies outside DVC) and lists its data keys but
    ``loader_workers`` (which changes no result); both such suites have the same one."""
    root = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    suites = [p for p in sorted((ROOT / "pipelines").glob("*/dvc.yaml")) if p.parent.name != "tune"]
    assert len(suites) >= 7
    folder_prepares = []
    for path in suites:
        suite = yaml.safe_load(path.read_text())
        assert suite["vars"] == [{"code": "../../src/sparsebench"}], path
        dataset = yaml.safe_load((path.parent / "params.yaml").read_text())["data"]["dataset"]
        if dataset in FOLDER_DATASETS:
            prepare = suite["stages"].pop("prepare")
            assert prepare["always_changed"] is True
            assert "data.loader_workers" not in prepare["params"] and len(prepare["params"]) == 8
            folder_prepares.append(prepare)
            suite["stages"]["prepare"] = root["stages"]["prepare"]
        assert suite["stages"] == root["stages"], f"{path}: stages differ from the root's"
        assert suite.get("plots") == root.get("plots"), path
    assert len(folder_prepares) == 2 and folder_prepares[0] == folder_prepares[1]
