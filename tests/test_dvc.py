"""The real DVC pipeline (dvc.yaml of the repo) on a shrunk params.yaml in tmp_path.

`dvc repro` runs every stage; run again it does nothing; `dvc exp run -S` on one method's key
reruns only that method's stages and the report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, small_params

pytestmark = pytest.mark.slow


def _sh(*cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture
def project(tmp_path):
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "tuned", tmp_path / "tuned")  # dependencies of the method stages
    (tmp_path / "calibrated").mkdir()
    shutil.copytree(ROOT / "src", tmp_path / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load(small_params(tmp_path).read_text())
    params["methods"] = {k: params["methods"][k] for k in ("dense", "gmp")}
    params["tune"]["spaces"] = {"gmp": params["tune"]["spaces"]["gmp"]}  # spaces name methods
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "SPARSEBENCH_ROOT": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_TRACKING_URI", None)
    _sh("git", "init", "-q", cwd=tmp_path, env=env)
    _sh("dvc", "init", "-q", cwd=tmp_path, env=env)
    _sh("dvc", "config", "core.analytics", "false", cwd=tmp_path, env=env)
    _sh("git", "add", "-A", cwd=tmp_path, env=env)
    _sh("git", "commit", "-qm", "init", cwd=tmp_path, env=env)
    return tmp_path, env


def _trained(output: str, key: str) -> tuple[int, int, int]:
    """(runs, cached, to train) that ``run@<key>`` printed."""
    found = re.search(rf"run {key}: (\d+) runs, (\d+) cached, (\d+) to train", output)
    assert found, output[-2000:]
    return tuple(int(g) for g in found.groups())


def test_repro_then_nothing_then_only_the_runs_a_change_touches(project):
    path, env = project
    first = _sh("dvc", "repro", cwd=path, env=env)
    assert set(_ran(first)) == {"prepare", "pretrain", "run@dense", "run@gmp", "report"}
    assert _trained(first, "gmp") == (10, 0, 10)  # 5 levels x 2 seeds
    assert (path / "reports" / "curves.md").exists()
    assert _ran(_sh("dvc", "repro", cwd=path, env=env)) == []

    params = yaml.safe_load((path / "params.yaml").read_text())
    params["levels"]["compression"].append(256)  # a new level: only its runs train
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _sh("dvc", "repro", cwd=path, env=env)
    assert set(_ran(out)) == {"run@dense", "run@gmp", "report"}
    assert _trained(out, "gmp") == (12, 10, 2)
    assert _trained(out, "dense") == (2, 2, 0)

    params["methods"]["gmp"]["optimizer"]["lr"] = 0.01  # one method's parameters
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _sh("dvc", "repro", cwd=path, env=env)
    assert set(_ran(out)) == {"run@gmp", "report"}
    assert _trained(out, "gmp") == (12, 0, 12)
    metrics = json.loads(_sh("dvc", "metrics", "show", "--json", cwd=path, env=env))
    shown = next(iter(metrics.values()))["data"]["metrics/gmp.json"]["data"]
    assert shown["levels"]["c256"]["mean"]["sparsity"] == pytest.approx(1 - 1 / 256, abs=1e-3)
    assert shown["levels"]["c8"]["mean"]["sparsity"] == pytest.approx(0.875, abs=1e-3)


def test_the_tuning_pipeline_feeds_nothing_of_the_benchmark():
    """pipelines/tune: a study per space after prepare and pretrain, then tune-report; the
    benchmark's own graph never reaches a study (tuned/ is read, not produced, by it)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    spaces = yaml.safe_load((ROOT / "params.yaml").read_text())["tune"]["spaces"]
    tune = _sh("dvc", "dag", "--dot", "pipelines/tune/dvc.yaml:report", cwd=ROOT, env=env)
    for key in spaces:
        stage = f'"pipelines/tune/dvc.yaml:tune@{key}"'
        assert f'"pretrain" -> {stage}' in tune
        assert f'{stage} -> "pipelines/tune/dvc.yaml:report"' in tune
    bench = _sh("dvc", "dag", "--dot", "report", cwd=ROOT, env=env)
    assert "tune" not in bench and '"run@admm"' in bench
