"""The real DVC pipeline (dvc.yaml of the repo) on a shrunk params.yaml in tmp_path.

`dvc repro` runs every stage; run again it does nothing; a change of one method's key reruns
the run stage, which trains that method's runs alone, and the report. The suites under
pipelines/ are DVC projects of their own: the root's `dvc status`, `dvc metrics show` and
`dvc params diff` never show them.
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
from conftest import ROOT, seed_store, small_params

pytestmark = pytest.mark.slow


def _sh(*cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _stages(status: str) -> list[str]:
    """The stages that `dvc status` lists (its unindented lines)."""
    return [line[:-1] for line in status.splitlines() if line.endswith(":") and line[0] != "\t"]


@pytest.fixture
def project(tmp_path, store_template):
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    tracked = subprocess.run(["git", "ls-files", "-z", "pipelines"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, tracked):  # the suites as a clone has them, never run
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
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
    seed_store(store_template, tmp_path / "mlruns" / "mlflow.db")  # untracked, as a user's
    return tmp_path, env


def _trained(output: str, key: str) -> tuple[int, int, int]:
    """(runs, cached, to train) that the run stage printed for ``methods.<key>``."""
    found = re.search(rf"run {key}: (\d+) runs, (\d+) cached, (\d+) to train", output)
    assert found, output[-2000:]
    return tuple(int(g) for g in found.groups())


def test_repro_then_nothing_then_only_the_runs_a_change_touches(project):
    path, env = project
    first = _sh("dvc", "repro", cwd=path, env=env)
    assert set(_ran(first)) == {"prepare", "run", "report"}
    assert _trained(first, "gmp") == (10, 0, 10)  # 5 levels x 2 seeds
    assert (path / "reports" / "curves.md").exists()
    assert _ran(_sh("dvc", "repro", cwd=path, env=env)) == []
    # the suites under pipelines/ never ran, and the root's status does not list them
    assert _sh("dvc", "status", cwd=path, env=env).strip() == "Data and pipelines are up to date."
    table = subprocess.run(["dvc", "metrics", "show"], cwd=path, env=env, capture_output=True,
                           text=True, timeout=600)
    assert table.returncode == 0 and "failed to load" not in table.stdout + table.stderr
    assert table.stdout.split("\n")[0].split() == ["Path", "c008", "c016", "c032", "c064",
                                                   "c128", "dense"]
    assert [row.split()[0] for row in table.stdout.splitlines()[1:]] == [
        "metrics/dense.json", "metrics/gmp.json"]
    assert _sh("dvc", "params", "diff", cwd=path, env=env) == ""  # params.yaml as committed

    params = yaml.safe_load((path / "params.yaml").read_text())
    params["levels"]["compression"].append(256)  # a new level: only its runs train
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _sh("dvc", "repro", cwd=path, env=env)
    assert set(_ran(out)) == {"run", "report"}
    assert "pretrain: 2 seeds cached" in out
    assert _trained(out, "gmp") == (12, 10, 2)
    assert _trained(out, "dense") == (2, 2, 0)

    params["methods"]["gmp"]["optimizer"]["lr"] = 0.01  # one method's parameters
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    diff = _sh("dvc", "params", "diff", cwd=path, env=env)
    assert [line.split()[:2] for line in diff.splitlines()] == [
        ["Path", "Param"], ["params.yaml", "levels.compression"],
        ["params.yaml", "methods.gmp.optimizer.lr"]]
    assert set(_stages(_sh("dvc", "status", cwd=path, env=env))) == {"run", "report"}
    out = _sh("dvc", "repro", "--single-item", "run", cwd=path, env=env)  # the report: above
    assert _trained(out, "gmp") == (12, 0, 12)
    assert _trained(out, "dense") == (2, 2, 0)  # another method's runs: kept
    evaluation = json.loads((path / "evaluation" / "gmp.json").read_text())["levels"]
    assert evaluation["c256"]["mean"]["sparsity"] == pytest.approx(1 - 1 / 256, abs=1e-3)
    assert evaluation["c8"]["mean"]["sparsity"] == pytest.approx(0.875, abs=1e-3)
    metrics = json.loads(_sh("dvc", "metrics", "show", "--json", cwd=path, env=env))
    shown = next(iter(metrics.values()))["data"]["metrics/gmp.json"]["data"]
    assert list(shown) == ["c008", "c016", "c032", "c064", "c128", "c256"]
    assert shown["c256"] == evaluation["c256"]["mean"]["test_accuracy"]


def test_the_tuning_pipeline_feeds_nothing_of_the_benchmark():
    """pipelines/tune, a DVC project of its own: a study per space after the root's prepare and
    pretrain (its stages work at the root), then tune-report; the benchmark's own graph never
    reaches a study (tuned/ is read, not produced, by it)."""
    from dvc.repo import Repo

    spaces = yaml.safe_load((ROOT / "params.yaml").read_text())["tune"]["spaces"]
    tune = _sh("dvc", "--cd", "pipelines/tune", "dag", "--dot", cwd=ROOT, env=_env())
    for key in spaces:
        assert f'"tune@{key}" -> "report"' in tune
    with Repo(str(ROOT / "pipelines" / "tune")) as repo:
        studies = {s.name: {Path(d.fs_path) for d in s.deps} for s in repo.index.stages
                   if s.name != "report"}
    assert set(studies) == {f"tune@{key}" for key in spaces}
    for deps in studies.values():
        assert {ROOT / "data/prepared/splits.safetensors", ROOT / "runs/pretrain"} <= deps
    bench = _sh("dvc", "dag", "--dot", cwd=ROOT, env=_env())
    assert "tune" not in bench and '"run"' in bench


def test_the_root_shows_the_default_suite_alone():
    """At the repository root (as cloned, or after any repro): `dvc status` lists root stages
    only, `dvc metrics show` reads every method's metrics file without an error, and `dvc params
    diff` knows the root params.yaml alone."""
    env = _env()
    root_stages = set(_sh("dvc", "stage", "list", "--name-only", cwd=ROOT, env=env).split())
    assert "run" in root_stages and not any("pipelines/" in s for s in root_stages)
    status = _sh("dvc", "status", cwd=ROOT, env=env)
    assert "pipelines/" not in status and set(_stages(status)) <= root_stages
    table = subprocess.run(["dvc", "metrics", "show"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert table.returncode == 0, table.stderr
    assert "failed to load" not in table.stdout + table.stderr
    methods = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]
    assert [row.split()[0] for row in table.stdout.splitlines()[1:]] == sorted(
        f"metrics/{key}.json" for key in methods)  # the metrics folder, in file order
    assert "pipelines/" not in _sh("dvc", "params", "diff", "--all", cwd=ROOT, env=env)


def test_metric_columns_sort_as_their_levels():
    from sparsebench.pipeline.summary import metric_column

    names = ["c8", "c16", "c32", "c35", "c64", "c71.2", "c128", "c142", "dense"]
    columns = [metric_column(n) for n in names]
    assert columns == ["c008", "c016", "c032", "c035", "c064", "c071.2", "c128", "c142", "dense"]
    assert sorted(columns) == columns  # dvc metrics show orders its columns as text
