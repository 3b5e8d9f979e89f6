"""The bounds ALGORITHMS.md sets on the methods' hyperparameters, from the pipeline's side:
every stage refuses a value outside them in one line naming the key, the value and what is
allowed, with exit code 2 and nothing written; gRDA's mu in (0, 0.5] runs with one warning line.
(The optimizers' own ValueErrors are in tests/optim/test_optim_validation.py.)"""

from __future__ import annotations

import pytest
import yaml
from conftest import small_params

from sparsebench.pipeline.cli import main

REGION = ("is outside the convergence region of symmetric ADMM; allowed: r in (-1, 1), "
          "s in (0, (1 + sqrt 5) / 2), r + s > 0 and |r| < 1 + s - s^2")

BAD = [
    ("admm", {"rho": 0.0}, "methods.admm.rho: 0.0 is not allowed; input should be greater than 0"),
    ("admm", {"rho": -0.001}, "methods.admm.rho: -0.001 is not allowed; input should be greater"),
    ("admm_l1", {"rho": 0}, "methods.admm_l1.rho: 0 is not allowed; input should be greater than"),
    # a keep ratio of 0 (sparsity 1) and of 1.5 (sparsity -0.5): outside (0, 1]
    ("admm", {"layer_sparsity": {"layers.1": 1.0}},
     "methods.admm.layer_sparsity.layers.1: 1.0 is not allowed; input should be less than 1"),
    ("sas_admm", {"layer_sparsity": {"layers.3": -0.5}},
     "methods.sas_admm.layer_sparsity.layers.3: -0.5 is not allowed; input should be greater"),
    ("admm", {"layer_sparsity": {"fc9": 0.5}},
     "methods.admm.layer_sparsity.fc9: unknown layer; allowed: layers.1, layers.3, layers.5"),
    ("gmp", {"layer_sparsity": {"layers.7": 0.5}},
     "methods.gmp.layer_sparsity.layers.7: unknown layer; allowed: layers.1, layers.3, layers.5"),
    ("sas_admm", {"r": 1.0}, f"methods.sas_admm: (r, s) = (1.0, 1.09) {REGION}"),
    ("sas_admm", {"s": 1.7}, f"methods.sas_admm: (r, s) = (0.9, 1.7) {REGION}"),
    ("sas_admm", {"r": -0.5, "s": 0.4}, f"methods.sas_admm: (r, s) = (-0.5, 0.4) {REGION}"),
    ("grda", {"lr": -0.1}, "methods.grda.lr: -0.1 is not allowed; input should be greater than 0"),
    ("grda", {"mu": 1.0}, "methods.grda.mu: 1.0 is not allowed; input should be less than 1"),
    ("grda", {"mu": 0.0}, "methods.grda.mu: 0.0 is not allowed; input should be greater than 0"),
    ("grda", {"c": -0.01}, "methods.grda.c: -0.01 is not allowed; input should be greater than or"),
    ("linbreg", {"delta": 0.0},
     "methods.linbreg.delta: 0.0 is not allowed; input should be greater than 0"),
    ("linbreg", {"lam": -0.5}, "methods.linbreg.lam: -0.5 is not allowed; input should be greater"),
    ("linbreg", {"lr": -1.0}, "methods.linbreg.lr: -1.0 is not allowed; input should be greater"),
    ("adabreg", {"delta": -1.0}, "methods.adabreg.delta: -1.0 is not allowed; input should be"),
    ("adabreg", {"betas": [0.9, 1.0]},
     "methods.adabreg.betas.1: 1.0 is not allowed; input should be less than 1"),
    ("adabreg", {"betas": [-0.1, 0.999]},
     "methods.adabreg.betas.0: -0.1 is not allowed; input should be greater than or equal to 0"),
]


def _with(workspace, key: str, values: dict):
    path = small_params(workspace, tracking={"enabled": False})
    params = yaml.safe_load(path.read_text())
    params["methods"][key] = {**(params["methods"][key] or {}), **values}
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("stage", ["check-params", "run", "calibrate"])
@pytest.mark.parametrize("key, values, expected", BAD)
def test_a_value_outside_the_bounds_is_one_line_and_exit_2(workspace, capsys, stage, key,
                                                           values, expected):
    path = _with(workspace, key, values)
    argv = [stage, "--params", str(path)] + ([] if stage == "check-params" else
                                             ["--method", key])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sparsebench: error: {expected}"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in workspace.iterdir()) == ["params.yaml"]  # nothing written


def test_grda_mu_at_most_one_half_warns_in_one_line_and_runs(workspace, capsys):
    path = _with(workspace, "grda", {"mu": 0.5})
    assert main(["check-params", "--params", str(path)]) == 0
    err = capsys.readouterr().err
    assert err == ("sparsebench: warning: mu = 0.5 is at most 0.5: gRDA's sparsity results "
                   "(Chao et al. 2020) need 0.5 < mu < 1\n")
    path = _with(workspace, "grda", {"mu": 0.501})
    assert main(["check-params", "--params", str(path)]) == 0
    assert capsys.readouterr().err == ""
