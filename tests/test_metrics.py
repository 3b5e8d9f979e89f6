"""Tests for sparsebench.core.metrics (numbers computed by hand from the formulas)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from sparsebench.core.metrics import (
    count_flops,
    evaluate_model_metrics,
    layer_sparsity,
    prunable_modules,
    sparsity_summary,
)


def _linear_with_zero_rows(rows: int, bias: bool = False) -> nn.Linear:
    """Linear(10, 4) with all-ones weight whose first ``rows`` rows are zero."""
    layer = nn.Linear(10, 4, bias=bias)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.weight[:rows] = 0.0
    return layer


def _lenet5() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),  # 1x28x28 -> 20x24x24
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> 20x12x12
        nn.Conv2d(20, 50, 5),  # -> 50x8x8
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> 50x4x4
        nn.Flatten(),  # -> 800
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


def test_prunable_modules_are_linear_and_conv_in_model_order():
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Flatten(), nn.Linear(3, 2), nn.LayerNorm(2)
    )
    names = [name for name, _ in prunable_modules(model)]
    assert names == ["0", "3"]


def test_linear_known_zero_pattern_gives_exact_sparsity_density_compression():
    model = nn.Sequential(_linear_with_zero_rows(3))  # 30 zeros of 40
    layer = layer_sparsity(model)["0"]
    assert layer == {"numel": 40, "nonzeros": 10, "sparsity": 0.75, "density": 0.25}
    summary = sparsity_summary(model)
    assert summary["numel"] == 40
    assert summary["nonzeros"] == 10
    assert summary["sparsity"] == 0.75
    assert summary["density"] == 0.25
    assert summary["compression"] == 4.0


def test_biases_and_norm_params_excluded_from_prunable_but_counted_in_all_params():
    linear = _linear_with_zero_rows(1, bias=True)  # weight: 40 numel, 30 nonzero
    with torch.no_grad():
        linear.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))  # 3 nonzero of 4
    norm = nn.BatchNorm1d(4)  # weight ones (4 nonzero), bias zeros (0 nonzero)
    model = nn.Sequential(linear, norm)
    summary = sparsity_summary(model)
    assert summary["numel"] == 40
    assert summary["nonzeros"] == 30
    assert summary["compression"] == 40 / 30
    assert summary["params_total"] == 40 + 4 + 4 + 4
    assert summary["params_nonzero"] == 30 + 3 + 4 + 0
    assert summary["compression_all"] == 52 / 37


def test_torch_prune_model_counted_by_masked_weight_without_double_counting():
    linear = nn.Linear(10, 4)
    with torch.no_grad():
        linear.weight.fill_(1.0)
        linear.bias.fill_(1.0)
    mask = torch.ones(4, 10)
    mask[:, :4] = 0  # 16 masked weights
    prune.custom_from_mask(linear, "weight", mask)
    model = nn.Sequential(linear)
    assert int(torch.count_nonzero(linear.weight_orig)) == 40  # the raw weight is dense

    assert layer_sparsity(model)["0"]["nonzeros"] == 24
    summary = sparsity_summary(model)
    assert summary["numel"] == 40
    assert summary["nonzeros"] == 24
    assert summary["params_total"] == 40 + 4  # weight_orig once, mask buffer not counted
    assert summary["params_nonzero"] == 24 + 4
    flops = count_flops(model, (10,))
    assert flops["flops"] == 40
    assert flops["flops_nonzero"] == 24


def test_linear_flops_per_sample_and_per_leading_position():
    model = nn.Sequential(nn.Linear(10, 4))
    assert count_flops(model, (10,))["flops"] == 10 * 4
    assert count_flops(model, (3, 10))["flops"] == 3 * 10 * 4  # 3 leading positions


def test_conv2d_flops_with_stride_padding_groups():
    conv = nn.Conv2d(4, 6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), groups=2)
    model = nn.Sequential(conv)
    result = count_flops(model, (4, 9, 7))
    out_h = (9 + 2 * 1 - 3) // 2 + 1  # 5
    out_w = (7 + 2 * 0 - 2) // 1 + 1  # 6
    assert (out_h, out_w) == (5, 6)
    expected = out_h * out_w * (6 * (4 // 2) * 3 * 2)  # 30 * 72
    assert expected == 2160
    assert result["flops"] == expected
    assert result["layers"]["0"] == {"flops": 2160, "flops_nonzero": 2160}


def test_nonzero_flops_and_speedup_with_known_mask():
    linear = nn.Linear(10, 4)
    with torch.no_grad():
        linear.weight.fill_(1.0)
    mask = torch.ones(4, 10)
    mask.view(-1)[:15] = 0  # 25 nonzero weights
    prune.custom_from_mask(linear, "weight", mask)
    conv = nn.Conv2d(1, 2, 3)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight[0] = 0.0  # 9 of 18 weights zero
    model_lin = nn.Sequential(linear)
    lin = count_flops(model_lin, (10,))
    assert (lin["flops"], lin["flops_nonzero"]) == (40, 25)
    assert lin["flop_speedup"] == 40 / 25

    conv_flops = count_flops(nn.Sequential(conv), (1, 5, 5))  # output 2x3x3
    assert conv_flops["flops"] == 9 * 18
    assert conv_flops["flops_nonzero"] == 9 * 9
    assert conv_flops["flop_speedup"] == 2.0


def test_lenet5_dense_flops_match_hand_computation():
    model = _lenet5()
    result = count_flops(model, (1, 28, 28))
    conv1 = 24 * 24 * 20 * 25
    conv2 = 8 * 8 * 50 * 20 * 25
    fc1 = 800 * 500
    fc2 = 500 * 10
    assert (conv1, conv2, fc1, fc2) == (288_000, 1_600_000, 400_000, 5_000)
    assert {name: layer["flops"] for name, layer in result["layers"].items()} == {
        "0": conv1,
        "3": conv2,
        "7": fc1,
        "9": fc2,
    }
    assert result["flops"] == conv1 + conv2 + fc1 + fc2
    assert sparsity_summary(model)["numel"] == 430_500  # ShrinkBench's 430.5K


def test_all_zero_weights_give_infinite_compression_and_speedup():
    model = nn.Sequential(nn.Linear(10, 4, bias=False))
    nn.init.zeros_(model[0].weight)
    summary = sparsity_summary(model)
    assert summary["sparsity"] == 1.0
    assert math.isinf(summary["compression"])
    assert math.isinf(summary["compression_all"])
    flops = count_flops(model, (10,))
    assert flops["flops_nonzero"] == 0
    assert math.isinf(flops["flop_speedup"])


def _no_forward_hooks(model: nn.Module) -> bool:
    return all(len(m._forward_hooks) == 0 for m in model.modules())


def test_count_flops_restores_training_modes_and_removes_hooks():
    model = nn.Sequential(nn.Linear(10, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    model[2].eval()  # mixed modes must be restored module by module
    count_flops(model, (10,))
    assert [m.training for m in model] == [True, True, False, True]
    assert model.training
    assert _no_forward_hooks(model)


def test_count_flops_cleans_up_when_forward_raises():
    model = nn.Sequential(nn.Linear(10, 4))
    model.train()
    with pytest.raises(RuntimeError):
        count_flops(model, (7,))  # wrong input size
    assert model.training and model[0].training
    assert _no_forward_hooks(model)


def test_evaluate_model_metrics_merges_summary_flops_and_layers():
    model = nn.Sequential(_linear_with_zero_rows(3), nn.ReLU(), nn.Linear(4, 2))
    metrics = evaluate_model_metrics(model, (10,))
    assert metrics["numel"] == 40 + 8
    assert metrics["nonzeros"] == 10 + int(torch.count_nonzero(model[2].weight))
    assert metrics["flops"] == 48
    assert metrics["layers"]["0"] == {
        "numel": 40,
        "nonzeros": 10,
        "sparsity": 0.75,
        "density": 0.25,
        "flops": 40,
        "flops_nonzero": 10,
    }
    expected_keys = {
        "sparsity", "density", "nonzeros", "numel", "compression", "params_total",
        "params_nonzero", "compression_all", "flops", "flops_nonzero",
        "flop_speedup", "linear_density", "layers",
    }
    assert set(metrics) == expected_keys


def test_known_masks_on_two_layers_give_the_hand_counted_figures():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    for layer in (model[0], model[2]):
        nn.init.constant_(layer.weight, 0.5)
        nn.init.constant_(layer.bias, 1.0)
    first = torch.ones(5, 6)
    first[:2] = 0  # two rows: 12 of 30 weights pruned
    second = torch.ones(3, 5)
    second[0, :4] = 0  # 4 of 15 weights pruned
    prune.custom_from_mask(model[0], "weight", first)
    prune.custom_from_mask(model[2], "weight", second)
    assert layer_sparsity(model) == {
        "0": {"numel": 30, "nonzeros": 18, "sparsity": 0.4, "density": 0.6},
        "2": {"numel": 15, "nonzeros": 11, "sparsity": pytest.approx(4 / 15),
              "density": pytest.approx(11 / 15)}}
    summary = sparsity_summary(model)
    assert (summary["numel"], summary["nonzeros"]) == (45, 29)
    assert summary["sparsity"] == pytest.approx(16 / 45)
    assert summary["density"] == pytest.approx(29 / 45)
    assert summary["compression"] == pytest.approx(45 / 29)
    assert (summary["params_total"], summary["params_nonzero"]) == (45 + 8, 29 + 8)
    flops = count_flops(model, (6,))
    assert (flops["flops"], flops["flops_nonzero"]) == (45, 29)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), keep=st.floats(0.0, 1.0))
def test_random_masks_are_counted_from_the_mask(seed: int, keep: float):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    kept = {}
    for name, layer in (("0", model[0]), ("2", model[2])):
        with torch.no_grad():  # every weight nonzero: the mask alone decides the zeros
            layer.weight.uniform_(0.5, 1.0, generator=generator)
        mask = (torch.rand(layer.weight.shape, generator=generator) < keep).float()
        prune.custom_from_mask(layer, "weight", mask)
        kept[name] = int(mask.sum())

    layers = layer_sparsity(model)
    for name, numel in (("0", 30), ("2", 15)):
        assert (layers[name]["numel"], layers[name]["nonzeros"]) == (numel, kept[name])
        assert layers[name]["sparsity"] == pytest.approx((numel - kept[name]) / numel)
    summary = sparsity_summary(model)
    assert summary["nonzeros"] == kept["0"] + kept["2"]
    assert summary["sparsity"] == pytest.approx(1 - (kept["0"] + kept["2"]) / 45)
    assert summary["params_total"] == 6 * 5 + 5 + 5 * 3 + 3
    flops = count_flops(model, (6,))
    assert (flops["flops"], flops["flops_nonzero"]) == (45, kept["0"] + kept["2"])


def test_kind_density_counts_whole_kernels_and_linear_weights():
    from sparsebench.core.metrics import kind_density

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0, 1, 1] = 1.0  # one of the two kernels has a nonzero entry
        model[2].weight.zero_()
        model[2].weight[0, :4] = 1.0  # 4 of 16 linear weights
    assert kind_density(model) == {"conv_kernel_density": 0.5, "linear_density": 0.25}
    assert kind_density(nn.Linear(2, 2)).keys() == {"linear_density"}
