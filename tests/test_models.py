"""Tests for sparsebench.core.models: architectures, parameter counts, registry and errors."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.core.models import MODELS, build_model, resnet
from sparsebench.util.errors import UsageError


def total_params(model: nn.Module) -> int:
    """All parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def prunable_weights(model: nn.Module) -> int:
    """Entries of the ``weight`` of every nn.Linear and nn.Conv* module."""
    return sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    )


def default_input(name: str, batch: int = 2) -> torch.Tensor:
    """A random batch at the builder's default input size."""
    params = inspect.signature(MODELS[name]).parameters
    channels = params["in_channels"].default
    size = params["image_size"].default
    return torch.randn(batch, channels, size, size)


# (name, kwargs, total parameters, prunable weights)
COUNTS = [
    ("mlp", {}, 266_610, 266_200),  # LeNet-300-100
    ("mlp", {"widths": [200, 80]}, 173_890, 173_600),  # Bregman 784-200-80-10
    ("lenet5", {}, 431_080, 430_500),
    ("convnet", {}, 236_618, 236_352),
    ("resnet20", {}, 269_722, 268_336),
    ("resnet32", {}, 464_154, 461_872),
    ("resnet56", {}, 853_018, 848_944),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "total", "weights"),
    COUNTS,
    ids=[f"{n}-{k.get('widths', 'default')}" for n, k, *_ in COUNTS],
)
def test_parameter_counts_are_exact(name, kwargs, total, weights):
    model = build_model(name, **kwargs)
    assert total_params(model) == total
    assert prunable_weights(model) == weights


def test_resnet32_fc_weight_is_64_by_10():
    model = build_model("resnet32")
    assert model.fc.weight.shape == (10, 64)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_at_default_input_size(name):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(default_input(name))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_tiny_synthetic_input_1x8x8_works(name):
    model = build_model(name, in_channels=1, image_size=8, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 3)


@pytest.mark.parametrize("name", ["lenet5", "convnet"])
@pytest.mark.parametrize("size", [16, 32])
def test_conv_nets_compute_flatten_size_from_image_size(name, size):
    model = build_model(name, in_channels=3, image_size=size, num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 4)


def test_lenet5_has_relu_only_after_fc1():
    model = build_model("lenet5")
    assert [type(m) for m in model.children()].count(nn.ReLU) == 1



def test_lenet5_without_dropout_trains_as_the_model_before_the_option():
    """dropout 0 (the default) adds no module that draws random numbers: 20 Adam steps from
    seed 0 end on the same weights as dropout 0.0 given explicitly, and the global generator
    is where those steps left it (no draw spent on a mask)."""

    def train(**kwargs):
        torch.manual_seed(0)
        model = build_model("lenet5", **kwargs).train()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        data = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.randn(8, 1, 28, 28, generator=data), torch.randint(0, 10, (8,))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return model.state_dict(), torch.get_rng_state()

    (plain, rng), (zero, rng_zero) = train(), train(dropout=0.0)
    assert all(torch.equal(plain[k], zero[k]) for k in plain) and torch.equal(rng, rng_zero)
    assert not any(isinstance(m, nn.Dropout) for m in build_model("lenet5").modules())


def test_lenet5_dropout_zeroes_fc1_activations_in_training_only():
    """p = 0.5 after fc1's ReLU, as in the ADMM authors' LeNet-5: in training about half of
    fc2's inputs are zero and the rest scaled by 1 / (1 - p); in eval mode the output is the
    model's without dropout."""
    torch.manual_seed(0)
    model = build_model("lenet5", dropout=0.5)
    seen = []
    model.fc2.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        model.eval()
        clean = model(x)
        active = seen[-1] > 0
        model.train()
        model(x)
    dropped = seen[-1]
    kept = dropped[active] != 0
    assert 0.45 < kept.float().mean() < 0.55
    assert torch.allclose(dropped[active][kept], 2 * seen[0][active][kept])
    plain = build_model("lenet5")
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), clean)
    assert model.arch == {"name": "lenet5", "args": {"dropout": 0.5}}


@pytest.mark.parametrize("p", [1, 1.0, -0.1, float("nan"), "0.5", True, None])
def test_bad_lenet5_dropout_is_a_usage_error(p):
    allowed = r"allowed: a number in \[0, 1\)$"
    with pytest.raises(UsageError, match=r"^model\.args\.dropout: .* is invalid; " + allowed):
        build_model("lenet5", dropout=p)

@pytest.mark.parametrize(
    ("name", "kwargs"),
    [(name, {}) for name in sorted(MODELS)]
    + [("mlp", {"widths": [200, 80]}), ("lenet5", {"num_classes": 5, "image_size": 32})],
)
def test_arch_round_trip_rebuilds_same_state_dict(name, kwargs):
    model = build_model(name, **kwargs)
    assert model.arch == {"name": name, "args": kwargs}
    rebuilt = build_model(**{"name": model.arch["name"], **model.arch["args"]})
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())


def test_arch_args_are_a_copy_of_kwargs():
    kwargs = {"widths": [200, 80]}
    model = build_model("mlp", **kwargs)
    kwargs["num_classes"] = 3
    assert model.arch["args"] == {"widths": [200, 80]}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_gives_identical_weights(name):
    torch.manual_seed(123)
    first = build_model(name).state_dict()
    torch.manual_seed(123)
    second = build_model(name).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_different_seeds_give_different_weights():
    torch.manual_seed(0)
    first = build_model("mlp").state_dict()
    torch.manual_seed(1)
    second = build_model("mlp").state_dict()
    assert not torch.equal(first["layers.1.weight"], second["layers.1.weight"])


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet56"])
def test_resnet_option_a_shortcut_has_no_parameters(name):
    model = build_model(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.kernel_size == (3, 3) for m in convs)
    depth = int(name.removeprefix("resnet"))
    assert len(convs) + 1 == depth  # 6n + 1 convs and the fc layer: no projection convs
    for block in model.modules():
        if hasattr(block, "shortcut"):
            assert list(block.shortcut.parameters()) == []


def test_resnet_shortcut_subsamples_and_zero_pads_channels():
    block = build_model("resnet20").layer2[0]
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 16:]) == 0


def test_unknown_model_name_is_a_usage_error():
    with pytest.raises(UsageError, match=r"^model\.name: unknown name 'vgg'; allowed: .*resnet20"):
        build_model("vgg")


def test_unknown_kwarg_is_a_usage_error():
    with pytest.raises(UsageError, match=r"^model\.args\.depth: unknown argument; allowed: "):
        build_model("lenet5", depth=3)


@pytest.mark.parametrize("widths", [[], [300, 0], "300", [1.5], None, [True]])
def test_bad_widths_is_a_usage_error(widths):
    with pytest.raises(
        UsageError,
        match=r"^model\.args\.widths: .*; allowed: a non-empty list of positive integers$",
    ):
        build_model("mlp", widths=widths)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"num_classes": 0}, "num_classes"), ({"in_channels": "1"}, "in_channels")],
)
def test_bad_integer_argument_is_a_usage_error(kwargs, key):
    with pytest.raises(UsageError, match=rf"^model\.args\.{key}: .*; allowed: an integer >= 1"):
        build_model("mlp", **kwargs)


@pytest.mark.parametrize("name", ["lenet5", "convnet"])
def test_image_too_small_for_conv_net_is_a_usage_error(name):
    with pytest.raises(UsageError, match=r"^model\.args\.image_size: 8 is too small .*>= 16"):
        build_model(name, image_size=8)


@pytest.mark.parametrize("depth", [21, 2, 0, "20"])
def test_bad_resnet_depth_is_a_usage_error(depth):
    with pytest.raises(UsageError, match=r"^model\.args\.depth: .*6n\+2"):
        resnet(depth)


def test_a_bad_dropout_in_params_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    import io
    from contextlib import redirect_stderr

    import yaml
    from conftest import small_params

    from sparsebench.pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    path = small_params(tmp_path, model={"name": "lenet5", "args": {"dropout": 1.5}})
    params = yaml.safe_load(path.read_text())
    params["data"]["synthetic_shape"] = [1, 28, 28]
    path.write_text(yaml.safe_dump(params))
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["check-params", "--params", str(path)]) != 0
    assert err.getvalue() == ("sparsebench: error: model.args.dropout: 1.5 is invalid; "
                              "allowed: a number in [0, 1)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
