"""benchmarks/time_to_accuracy.py: what it scores is what the methods return, and every
schedule fits the same budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import time_to_accuracy as tta

from sparsebench.core.sparsity import get_masks
from sparsebench.core.train import Phase
from sparsebench.methods import build_method, method_params
from sparsebench.methods.base import Context
from sparsebench.methods.sas_admm import inner_steps

SAS = {"method": "sas_admm", "target_sparsity": 0.5, "beta": 0.04, "lam": 1e-4, "M": 2,
       "k0": 2, "q": 1.1, "v": 25, "iterations": 5, "last": 3, "batch_size": 32}


@pytest.mark.parametrize("M, k0, budget, batch, n", [(100, 10, 8, 128, 55000), (3, 2, 2, 32, 256),
                                                     (25, 5, 1, 16, 1000)])
def test_sas_admm_gets_the_most_iterations_that_fit_the_budget(M, k0, budget, batch, n):
    k = tta.sas_iterations(M, k0, 1.1, budget, batch, n)
    steps = sum(inner_steps(i, M, k0, 1.1) for i in range(1, k + 1))
    assert steps * batch <= budget * n < (steps + inner_steps(k + 1, M, k0, 1.1)) * batch


def test_a_budget_too_small_for_one_iteration_is_refused():
    with pytest.raises(SystemExit, match="exceed the budget"):
        tta.sas_iterations(100, 10, 1.1, 1, 128, 1000)


def test_scale_shrinks_m_and_k0_and_fits_sas_admm_to_the_budget():
    base = {**SAS, "M": 100, "k0": 10, "iterations": 23, "last": 16, "batch_size": 128}
    cfg = tta.configure("sas_admm", base, {}, budget=2, scale=0.25, n_train=55000)
    assert (cfg["M"], cfg["k0"]) == (25, 2)  # 100 x 0.25, 10 x 0.25 rounded
    assert cfg["iterations"] == tta.sas_iterations(25, 2, 1.1, 2, 128, 55000)
    assert cfg["last"] == round(16 / 23 * cfg["iterations"])
    admm = tta.configure("admm_l1_sgd", {"method": "admm_l1", "optimizer": {"lr": 1.0}},
                         {"optimizer.lr": 0.02, "rho": 0.5}, budget=3, scale=1, n_train=1)
    assert admm["iterations"] == 3 and admm["epochs_per_iteration"] == 1
    assert admm["optimizer"] == {"lr": 0.02, "name": "sgd", "momentum": 0.9,
                                 "schedule": "constant"}
    assert admm["rho"] == 0.5 and admm["method"] == "admm_l1"


def test_the_checked_average_is_the_average_sas_admm_returns(tiny_mlp, tiny_data):
    """The checker keeps its own sums of W over k >= last; at the end they must equal what
    SAS-ADMM writes into the network (checked on the kept entries: the method then masks)."""
    params = method_params("sas_admm", SAS)
    method = build_method("sas_admm", params)
    model = tiny_mlp
    retrain = Phase(0, 32)
    checker = tta.Checker("sas_admm", model, method, retrain, tiny_data["val"],
                          tiny_data["train"], tiny_data["val"], n_train=256, check=100.0, seed=0)
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=torch.Generator().manual_seed(0), seed=0, progress=False,
                  on_epoch=checker)
    method.prune(model, ctx)
    assert checker.averaged == SAS["iterations"] - SAS["last"] + 1  # k = 3, 4, 5
    snap, what = checker.returned()
    assert what == "average"
    masks = get_masks(model)
    mine = dict(snap.named_parameters())
    for name, module in model.named_modules():
        if name in masks:
            kept = masks[name]
            assert torch.equal(mine[f"{name}.weight"][kept], module.weight[kept])
            assert kept.sum() > 0


def test_a_check_scores_at_the_level_after_retrain(tiny_mlp, tiny_data):
    params = method_params("admm", {"method": "admm", "target_sparsity": 0.75, "iterations": 2,
                                    "epochs_per_iteration": 1, "batch_size": 32,
                                    "optimizer": {"name": "adam", "lr": 1e-3}})
    method = build_method("admm", params)
    checker = tta.Checker("admm", tiny_mlp, method, Phase(1, 32), tiny_data["val"],
                          tiny_data["train"], tiny_data["val"], n_train=256, check=1.0, seed=0)
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=torch.Generator().manual_seed(0), seed=0, progress=False,
                  on_epoch=checker)
    method.prune(tiny_mlp, ctx)
    assert [r["epoch"] for r in checker.rows] == [1, 2]
    assert all(r["returned"] == "W" and 0 <= r["accuracy"] <= 1 for r in checker.rows)
    assert checker.rows[1]["wall_seconds"] > checker.rows[0]["wall_seconds"] > 0


def test_checks_retrain_through_the_suite_s_augmentation(tiny_mlp, tiny_data, monkeypatch):
    """The benchmark's check retrain draws its batches as the pipeline's runs do: through the
    suite's ``data.augment`` (here a marker object; None when the suite has none)."""
    seen = []
    monkeypatch.setattr(tta, "masked_retrain", lambda snap, phase, ctx: seen.append(ctx.augment))
    params = method_params("admm", {"method": "admm", "target_sparsity": 0.75, "iterations": 1,
                                    "epochs_per_iteration": 1, "batch_size": 32})
    marker = object()
    for augment in (marker, None):
        checker = tta.Checker("admm", tiny_mlp, build_method("admm", params), Phase(1, 32),
                              tiny_data["val"], tiny_data["train"], tiny_data["val"],
                              n_train=256, check=1.0, seed=0, augment=augment)
        checker.score()
    assert seen[0] is marker and seen[1] is None
