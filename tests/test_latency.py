import pytest
import torch
from torch import nn

from sparsebench.core.latency import CSRLinear, compare_latency, sparse_inference_model
from sparsebench.core.models import build_model
from sparsebench.core.sparsity import apply_masks, magnitude_masks

TOL = {"rtol": 1e-5, "atol": 1e-5}  # float32, the CSR product sums in another order


def pruned(name: str, sparsity: float, layers: tuple[str, ...] | None = None) -> nn.Module:
    """A seeded model with per-layer magnitude masks applied (``nn.utils.prune`` form)."""
    torch.manual_seed(0)
    model = build_model(name)
    masks = magnitude_masks(model, sparsity, "layer")
    apply_masks(model, {k: v for k, v in masks.items() if layers is None or k in layers})
    return model


def csr_layers(model: nn.Module) -> dict[str, CSRLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, CSRLinear)}


@pytest.mark.parametrize("batch_size", [1, 7])
def test_sparse_mlp_matches_dense(batch_size):
    model = pruned("mlp", 0.9)
    x = torch.randn(batch_size, 1, 28, 28)
    expected = model.eval()(x)  # with autograd on: the masked weights become non-leaf tensors
    sparse = sparse_inference_model(model)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), expected, **TOL)
    assert len(csr_layers(sparse)) == 3
    assert not any(isinstance(m, nn.Linear) for m in sparse.modules())


@pytest.mark.parametrize("batch_size", [1, 7])
def test_sparse_lenet5_matches_dense_with_conv_untouched(batch_size):
    model = pruned("lenet5", 0.95, layers=("fc1", "fc2"))
    x = torch.randn(batch_size, 1, 28, 28)
    expected = model.eval()(x)
    sparse = sparse_inference_model(model)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), expected, **TOL)
    assert set(csr_layers(sparse)) == {"fc1", "fc2"}
    for name in ("conv1", "conv2"):
        conv = sparse.get_submodule(name)
        assert type(conv) is nn.Conv2d
        assert torch.equal(conv.weight, model.get_submodule(name).weight)


def test_masked_weights_are_absent_from_csr():
    model = pruned("mlp", 0.95)  # masked weights may be -0.0 here: they must not count
    sparse = sparse_inference_model(model)
    for name, layer in csr_layers(sparse).items():
        dense_weight = model.get_submodule(name).weight
        assert layer.weight_csr.layout == torch.sparse_csr
        assert layer.weight_csr.values().numel() == torch.count_nonzero(dense_weight).item()
        torch.testing.assert_close(layer.weight_csr.to_dense(), dense_weight.detach())


def test_original_model_is_left_as_it_was():
    model = pruned("mlp", 0.5).train()
    sparse_inference_model(model)
    assert model.training
    assert all(hasattr(m, "weight_mask") for m in model.layers if isinstance(m, nn.Linear))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(6,), (1, 6), (2, 3, 6)])
def test_csr_linear_handles_bias_and_leading_dims(bias, shape):
    torch.manual_seed(0)
    linear = nn.Linear(6, 4, bias=bias)
    x = torch.randn(shape)
    torch.testing.assert_close(sparse_inference_model(linear)(x), linear(x), **TOL)


def test_compare_latency_reports_every_batch_size(tiny_mlp):
    apply_masks(tiny_mlp, magnitude_masks(tiny_mlp, 0.75, "layer"))
    threads = torch.get_num_threads()
    result = compare_latency(tiny_mlp, (1, 4, 4), (1, 3), repeats=5, num_threads=1)
    assert result["num_threads"] == 1
    assert torch.get_num_threads() == threads
    assert set(result["batch"]) == {1, 3}
    for row in result["batch"].values():
        assert set(row) == {"dense_s", "sparse_s", "ratio"}
        assert all(value > 0 for value in row.values())
        assert row["ratio"] == pytest.approx(row["sparse_s"] / row["dense_s"])
