"""param_groups and prunable_parameters."""

from __future__ import annotations

import torch
from optim_problems import convnet, data, train
from torch import nn
from torch.nn.utils import prune

from sparsebench.optim import LinBreg, param_groups, prunable_parameters


def test_param_groups_regularise_prunable_weights_and_not_the_rest():
    model = nn.Sequential(convnet(), nn.BatchNorm1d(4))
    groups = param_groups(model, lam=0.5, reg_conv="l12_kernel", delta=2.0)
    linear, conv, rest = groups
    assert [id(p) for p in linear["params"]] == [id(model[0][3].weight)]
    assert [id(p) for p in conv["params"]] == [id(model[0][0].weight)]
    assert (linear["reg"], linear["lam"], linear["delta"]) == ("l1", 0.5, 2.0)
    assert (conv["reg"], conv["lam"], conv["delta"]) == ("l12_kernel", 0.5, 2.0)
    biases_and_norm = {id(model[0][0].bias), id(model[0][3].bias)}
    biases_and_norm |= {id(model[1].weight), id(model[1].bias)}
    assert {id(p) for p in rest["params"]} == biases_and_norm
    assert (rest["reg"], rest["lam"], rest["delta"]) == ("none", 0.0, 1.0)


def test_param_groups_leave_out_empty_groups():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    assert [g["reg"] for g in param_groups(model, lam=0.1)] == ["l1"]


def test_linbreg_on_param_groups_just_works():
    model = convnet()
    opt = LinBreg(param_groups(model, lam=0.5), lr=0.1)
    losses = train(model, opt, 20, data())
    assert losses[-1] < losses[0]
    assert "v" in opt.state[model[0].weight] and "v" not in opt.state[model[0].bias]


def test_prunable_parameters_count_a_shared_weight_once_and_use_weight_orig_if_pruned():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Conv1d(1, 2, 3))
    prune.l1_unstructured(model[3], "weight", amount=0.5)
    linear, conv, rest = prunable_parameters(model)
    assert [id(p) for p in linear] == [id(shared.weight)]
    assert [id(p) for p in conv] == [id(model[3].weight_orig)]
    assert {id(p) for p in rest} == {id(shared.bias), id(model[3].bias)}
    assert len(linear) + len(conv) + len(rest) == len(list(model.parameters()))


def test_param_groups_cover_every_parameter_once():
    model = nn.Sequential(convnet(), nn.LayerNorm(4))
    ids = [id(p) for g in param_groups(model, lam=0.1) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert isinstance(model[1].weight, torch.nn.Parameter)
