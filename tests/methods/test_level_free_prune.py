"""admm_l1's and SAS-ADMM's prune phases do not read the level: their Z-step is the l1 prox,
and the level enters only through the final magnitude prune (ALGORITHMS.md sections 3 and 4).
So two levels give the same trajectory, epoch for epoch, and the same weights under different
masks; plain ADMM, whose Z-step projects onto the level, does not. The prune phase shared
across levels (`sparsebench.run.shared_prune`, tests/test_shared_prune.py) rests on this."""

import pytest
import torch
from torch import nn

from sparsebench.core.sparsity import get_masks
from sparsebench.core.train import seed_everything
from sparsebench.methods import Context, build_method, method_params

SETTINGS = {
    "admm_l1": {"iterations": 2, "epochs_per_iteration": 1, "lam": 1e-3, "rho": 0.01,
                "batch_size": 32},
    "sas_admm": {"iterations": 3, "M": 3, "k0": 2, "last": 1, "batch_size": 32},
    "admm": {"iterations": 2, "epochs_per_iteration": 1, "rho": 0.01, "batch_size": 32},
}


def _prune(key: str, target: float, tiny_data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    params = method_params(key, {"target_sparsity": target, **SETTINGS[key]})
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, progress=False)
    curves = build_method(key, params).prune(model, ctx)
    rows = [{k: v for k, v in r.items() if k not in ("seconds", "sparsity", "val_loss",
                                                     "val_accuracy")} for r in curves]
    dense = {n: m.weight_orig.detach().clone() for n, m in model.named_modules()
             if hasattr(m, "weight_orig")}
    return rows, dense, get_masks(model)


@pytest.mark.parametrize("key", ["admm_l1", "sas_admm"])
def test_the_prune_trajectory_is_the_same_at_every_level(key, tiny_data):
    rows_a, dense_a, masks_a = _prune(key, 0.5, tiny_data)
    rows_b, dense_b, masks_b = _prune(key, 0.9, tiny_data)
    assert rows_a == rows_b
    assert dense_a.keys() == dense_b.keys() == masks_a.keys()
    for n in dense_a:  # the same weights where both levels keep them (masked ones are zeroed)
        both = masks_a[n].bool() & masks_b[n].bool()
        assert int(both.sum()) > 0 and torch.equal(dense_a[n][both], dense_b[n][both])
    assert any(not torch.equal(masks_a[n], masks_b[n]) for n in masks_a)  # the level's prune


def test_plain_admm_projects_onto_the_level_so_its_trajectory_differs(tiny_data):
    rows_a, _, _ = _prune("admm", 0.5, tiny_data)
    rows_b, _, _ = _prune("admm", 0.9, tiny_data)
    assert rows_a != rows_b
