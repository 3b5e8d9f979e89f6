"""The real DVC pipeline (dvc.yaml of the repo) on a shrunk params.yaml in tmp_path.

`dvc repro` runs every stage; run again it does nothing; `dvc exp run -S` on one method's key
reruns only that method's stages and the report.
"""

from __future__ import annotations

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
    shutil.copytree(ROOT / "tuned", tmp_path / "tuned")  # a dependency of the method stages
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


def test_repro_then_nothing_then_only_the_changed_method(project):
    path, env = project
    first = _ran(_sh("dvc", "repro", cwd=path, env=env))
    assert set(first) == {"prepare", "pretrain", "prune@dense", "prune@gmp", "retrain@dense",
                          "retrain@gmp", "evaluate@dense", "evaluate@gmp", "report"}
    assert (path / "reports" / "summary.md").exists()
    assert _ran(_sh("dvc", "repro", cwd=path, env=env)) == []

    _sh("git", "add", "-A", cwd=path, env=env)
    _sh("git", "commit", "-qm", "baseline", cwd=path, env=env)
    out = _sh("dvc", "exp", "run", "-S", "methods.gmp.target_sparsity=0.9", cwd=path, env=env)
    assert set(_ran(out)) == {"prune@gmp", "retrain@gmp", "evaluate@gmp", "report"}
    metrics = _sh("dvc", "metrics", "show", "--json", cwd=path, env=env)
    assert '"sparsity": 0.9' in metrics.replace("0.9000000000000001", "0.9")


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
    assert "tune" not in bench and '"prune@admm"' in bench
