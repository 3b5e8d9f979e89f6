"""Every script under benchmarks/ runs to its end on tiny inputs, so that none rots unnoticed.

Each script runs as its own process (``python benchmarks/X.py ARGS``), with the smallest
arguments `SMOKE` gives it, in a temporary directory that is also its temp dir and its
repository root (SPARSEBENCH_ROOT): it reads nothing of the repository's data, runs or tuned
values, writes nothing there, and downloads nothing. The scripts that read a suite (params.yaml,
prepared data, pretrained models, runs' records) run in a copy of `suite`, a tiny one made once
for the module. A script without an entry in `SMOKE` fails, so every new script gets a smoke run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, small_params

BENCHMARKS = ROOT / "benchmarks"


@dataclass(frozen=True)
class Smoke:
    """A script's smoke run: its arguments, whether it runs in a copy of `suite`, and whether
    it is slow (over about ten seconds: processes of its own, MLflow, the CLI)."""

    args: tuple[str, ...]
    suite: bool = False
    slow: bool = False


EPOCH = ("--rounds", "1", "--samples", "256")  # the options of benchmarks/epoch_speed.py

SMOKE: dict[str, Smoke] = {
    "admm_overhead.py": Smoke(EPOCH),
    "checkpoint_overhead.py": Smoke(EPOCH),
    "checkpoint_large.py": Smoke(("--models", "torchvision:resnet18", "--sparsities", "0.9")),
    "checkpoint_size.py": Smoke(("--models", "mlp", "--sparsities", "0.5", "0.99")),
    "ddp_scaling.py": Smoke(("--rounds", "1", "--samples", "256"), slow=True),
    "epoch_speed.py": Smoke(EPOCH),
    "image_throughput.py": Smoke(("--toy",)),
    "late_epochs.py": Smoke(("--params", "params.yaml", "--level", "8"), suite=True),
    "latency.py": Smoke(("--repeats-1", "1", "--repeats-256", "1")),
    "masked_epoch.py": Smoke(EPOCH),
    "method_variants.py": Smoke(("--method", "gmp", "--levels", "8", "--seeds", "0",
                                 "--variant", "frequency=1", "--workers", "1",
                                 "--out", "rows.json"), suite=True),
    "optim_step.py": Smoke(("--rounds", "1", "--warmup", "0", "--block", "1",
                            "--prox-variants")),
    "pipeline_efficiency.py": Smoke(("--rounds", "1", "--repeat", "1", "--samples", "256",
                                     "--random"), suite=True, slow=True),
    "sweep_scaling.py": Smoke(("--toy",), slow=True),
    "subnormal_census.py": Smoke(("--params", "params.yaml", "--flush"), suite=True),
    "time_to_accuracy.py": Smoke(("--levels", "8", "--seeds", "0", "--trials", "1",
                                  "--scale", "0.125", "--workers", "1", "--out", "tta"),
                                 suite=True),
    "tracking_overhead.py": Smoke(("--rounds", "1", "--epochs", "1", "--samples", "256"),
                                  slow=True),
    "tune_overhead.py": Smoke(("--params", "params.yaml", "--trials", "1"), suite=True,
                              slow=True),
}


def _cases() -> list:
    """Every script under benchmarks/ and every entry of `SMOKE`, the slow ones marked."""
    names = sorted({p.name for p in BENCHMARKS.glob("*.py")} | set(SMOKE))
    return [pytest.param(name, marks=[pytest.mark.slow] if name in SMOKE and SMOKE[name].slow
                         else []) for name in names]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """A tiny suite: params.yaml shrunk to synthetic data (1,024 training samples: SAS-ADMM's
    tuned M fits time_to_accuracy's one-epoch budget), seed 0, level 8x; prepared data, the
    pretrained model, and the runs of magnitude (SGD) and admm_l1 (Adam, a shared prune phase),
    with their stage profiles."""
    from sparsebench.pipeline import profile
    from sparsebench.pipeline.cli import main

    root = tmp_path_factory.mktemp("suite")
    path = small_params(root, seeds=[0], tracking={"enabled": False},
                        execution={"threads": 1, "workers": 1})
    raw = yaml.safe_load(path.read_text())
    raw["levels"]["compression"] = [8]
    raw["data"]["limit"] = 1024
    path.write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("SPARSEBENCH_ROOT", str(root))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for stage in (["prepare"], ["pretrain"], ["run", "--method", "magnitude"],
                      ["run", "--method", "admm_l1"]):
            profile._RECORD.clear()  # each stage's profile starts empty, as in its own process
            assert main([*stage, "--params", "params.yaml"]) == 0, stage
    return root


def _run(script: str, args: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(cwd), "SPARSEBENCH_ROOT": str(cwd), "MPLBACKEND": "Agg"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", _cases())
def test_benchmark_runs_to_its_end(script, request, tmp_path):
    assert (BENCHMARKS / script).exists(), f"SMOKE names {script}, which benchmarks/ lacks"
    if script not in SMOKE:
        pytest.fail(f"benchmarks/{script} has no smoke run: add its smallest arguments to SMOKE "
                    "in tests/test_benchmarks.py")
    smoke = SMOKE[script]
    cwd = tmp_path / "ws"
    if smoke.suite:
        shutil.copytree(request.getfixturevalue("suite"), cwd)
    else:
        cwd.mkdir()
    done = _run(script, smoke.args, cwd)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"exit {done.returncode}:\n{output[-4000:]}"
    assert "Traceback (most recent call last)" not in output, output[-4000:]
    assert done.stdout.strip(), "the script printed no figures"


def test_image_throughput_toy_runs_without_the_suites_dependencies(tmp_path):
    """benchmarks/image_throughput.py --toy prints the machine, both rates and a positive
    ratio in a process that cannot import what a bare GPU machine lacks (it has torch,
    torchvision, numpy, Pillow, safetensors, scipy, pyyaml, filelock): the script is run there."""
    script = str(BENCHMARKS / "image_throughput.py")
    code = ("import runpy, sys\n"
            "sys.modules.update(dict.fromkeys(('pydantic', 'mlflow', 'optuna', 'dvc', 'ray')))\n"
            f"sys.argv = [{script!r}, '--toy']\n"
            f"runpy.run_path({script!r}, run_name='__main__')\n")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    lines = done.stdout.splitlines()
    for prefix in ("machine: ", "synthetic: ", "streamed: ", "ratio streamed/synthetic: "):
        assert sum(line.startswith(prefix) for line in lines) == 1, (prefix, lines)
    ratio = next(line for line in lines if line.startswith("ratio streamed/synthetic: "))
    assert float(ratio.split()[2]) > 0, ratio
