import copy
import itertools
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from sparsebench.core.metrics import effective_weight
from sparsebench.core.sparsity import (
    ZeroedMask,
    agp_sparsity,
    apply_masks,
    effective_weights,
    get_masks,
    keep_count,
    load_masks,
    magnitude_masks,
    make_permanent,
    masks_from_scores,
    random_masks,
    save_masks,
    topk_mask,
    zero_masked_state,
)
from sparsebench.util.errors import UsageError


def test_topk_mask_keeps_exactly_k_with_ties():
    scores = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    mask = topk_mask(scores, 3)
    assert mask.sum() == 3
    assert mask.flatten().tolist() == [True, True, True, False, False, False]  # lower index wins


def test_topk_mask_selects_largest():
    scores = torch.tensor([0.1, 5.0, -3.0, 2.0])
    assert topk_mask(scores, 2).tolist() == [False, True, False, True]


def _first_k_of_a_stable_sort(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.view_as(scores)


@pytest.mark.parametrize("seed", range(4))
def test_topk_mask_is_the_first_k_of_a_stable_descending_sort(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (40, 25), generator=g).float()  # many ties at every value
    scores[0, :3] = float("-inf")
    for k in (0, 1, 7, 333, 500, 999, 1000, 1500):
        assert torch.equal(topk_mask(scores, k), _first_k_of_a_stable_sort(scores, k)), k
    scores[5, 5] = float("nan")  # NaN sorts first; the mask takes the sort then
    assert torch.equal(topk_mask(scores, 9), _first_k_of_a_stable_sort(scores, 9))


def test_keep_count_rounds_the_pruned_count_and_keeps_at_least_one():
    # 192 * 0.9 = 172.8 -> 173 pruned, 19 kept; 36 * 0.75 = 27 pruned; 10 * 0.999 -> 10 pruned,
    # but one entry stays
    assert [keep_count(n, s) for n, s in [(192, 0.9), (36, 0.75), (100, 0.0), (10, 0.999),
                                          (512, 0.9), (128, 0.5)]] == [19, 9, 100, 1, 51, 64]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 0.999])
def test_layer_masks_hit_target_in_every_layer(tiny_mlp, sparsity):
    masks = magnitude_masks(tiny_mlp, sparsity, "layer")
    for mask in masks.values():
        assert mask.sum().item() == keep_count(mask.numel(), sparsity)


def test_magnitude_masks_keep_largest_weights(tiny_mlp):
    masks = magnitude_masks(tiny_mlp, 0.5, "layer")
    weight = tiny_mlp[1].weight.detach().abs()
    assert weight[masks["1"]].min() >= weight[~masks["1"]].max()


def test_global_masks_rank_across_layers():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[10.0, 9.0], [8.0, 7.0]]))
        model[1].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    masks = magnitude_masks(model, 0.5, "global")
    assert masks["0"].all() and not masks["1"].any()
    layer = magnitude_masks(model, 0.5, "layer")
    assert layer["0"].sum() == 2 and layer["1"].sum() == 2


def test_unknown_scope_is_refused():
    with pytest.raises(UsageError, match="scope: unknown value 'net'; allowed: layer, global"):
        masks_from_scores({"a": torch.ones(3)}, 0.5, "net")


def test_random_masks_depend_on_generator_only(tiny_mlp):
    a = random_masks(tiny_mlp, 0.7, torch.Generator().manual_seed(1))
    b = random_masks(tiny_mlp, 0.7, torch.Generator().manual_seed(1))
    c = random_masks(tiny_mlp, 0.7, torch.Generator().manual_seed(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_apply_masks_keeps_parameter_identity(tiny_mlp):
    before = [id(p) for p in tiny_mlp.parameters()]
    apply_masks(tiny_mlp, magnitude_masks(tiny_mlp, 0.5))
    assert sorted(id(p) for p in tiny_mlp.parameters()) == sorted(before)
    assert hasattr(tiny_mlp[1], "weight_orig") and hasattr(tiny_mlp[1], "weight_mask")


def test_masked_entries_stay_zero_under_momentum_and_weight_decay(tiny_mlp):
    masks = magnitude_masks(tiny_mlp, 0.8)
    apply_masks(tiny_mlp, masks)
    opt = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        loss = tiny_mlp(torch.randn(8, 16)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for name, mask in masks.items():
            module = tiny_mlp.get_submodule(name)
            assert (module.weight_orig[~mask] == 0).all()
            assert (module.weight[~mask] == 0).all()


def test_reapplying_masks_updates_in_place(tiny_mlp):
    apply_masks(tiny_mlp, magnitude_masks(tiny_mlp, 0.5))
    buffer = tiny_mlp[1].weight_mask
    apply_masks(tiny_mlp, magnitude_masks(tiny_mlp, 0.9))
    assert tiny_mlp[1].weight_mask is buffer
    assert get_masks(tiny_mlp)["1"].sum() == 19  # 192 weights at 90%: 172.8 -> 173 pruned


def test_make_permanent_gives_plain_model_with_zeros(tiny_mlp):
    masks = magnitude_masks(tiny_mlp, 0.75)
    apply_masks(tiny_mlp, masks)
    make_permanent(tiny_mlp)
    assert set(dict(tiny_mlp.named_parameters())) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    assert (tiny_mlp[1].weight[~masks["1"]] == 0).all()
    assert get_masks(tiny_mlp) == {}


def test_apply_masks_refuses_unknown_layer(tiny_mlp):
    with pytest.raises(KeyError, match="nope"):
        apply_masks(tiny_mlp, {"nope": torch.ones(2, dtype=torch.bool)})


def test_masks_file_round_trip_is_packed(tmp_path, tiny_mlp):
    masks = random_masks(tiny_mlp, 0.6, torch.Generator().manual_seed(0))
    save_masks(masks, tmp_path / "m.safetensors")
    back = load_masks(tmp_path / "m.safetensors")
    assert set(back) == set(masks) and all(torch.equal(back[k], masks[k]) for k in masks)
    numel = sum(m.numel() for m in masks.values())
    assert (tmp_path / "m.safetensors").stat().st_size < numel / 8 + 1024


def test_empty_masks_round_trip(tmp_path):
    save_masks({}, tmp_path / "m.safetensors")
    assert load_masks(tmp_path / "m.safetensors") == {}


def test_load_masks_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(UsageError, match="not a sparsebench masks file"):
        load_masks(tmp_path / "x.safetensors")


def test_agp_schedule_follows_the_cubic_formula():
    # Zhu & Gupta: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 at t = t0 + k dt; with
    # s_i = 0, s_f = 0.9, n = 5: 0.9 (1 - (1 - k / 5)^3) = 0, 0.4392, 0.7056, 0.8424, 0.8928, 0.9
    s_i, s_f, t0, n, dt = 0.0, 0.9, 10, 5, 4
    by_hand = [0.0, 0.4392, 0.7056, 0.8424, 0.8928, 0.9]
    assert agp_sparsity(0, s_i, s_f, t0, n, dt) == s_i
    assert [agp_sparsity(t0 + k * dt, s_i, s_f, t0, n, dt) for k in range(n + 1)] == (
        pytest.approx(by_hand))
    # between two pruning steps the sparsity holds
    assert [agp_sparsity(t0 + k * dt + 1, s_i, s_f, t0, n, dt) for k in range(n + 1)] == (
        pytest.approx(by_hand))
    assert agp_sparsity(10_000, s_i, s_f, t0, n, dt) == pytest.approx(s_f)


def test_agp_schedule_is_monotone():
    values = [agp_sparsity(t, 0.1, 0.95, 0, 20, 3) for t in range(100)]
    assert all(b >= a for a, b in itertools.pairwise(values))


def test_pruned_entries_are_positive_zero(tiny_mlp):
    with torch.no_grad():
        tiny_mlp[1].weight.fill_(-1.0)
        tiny_mlp[1].weight[0, 0] = -5.0
    apply_masks(tiny_mlp, magnitude_masks(tiny_mlp, 0.5))
    make_permanent(tiny_mlp)
    zeros = tiny_mlp[1].weight[tiny_mlp[1].weight == 0]
    assert len(zeros) > 0 and not torch.signbit(zeros).any()


def _two_layer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_apply_masks_with_optimizer_zeroes_the_state_of_masked_entries(name):
    model = _two_layer()
    optimizer = OPTIMIZERS[name](model.parameters())
    _train(model, optimizer, 5, seed=1)
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks, optimizer)
    for layer, mask in masks.items():
        state = optimizer.state[model.get_submodule(layer).weight_orig]
        moments = [v for k, v in state.items() if k != "step"]
        assert moments and all(v.abs().sum() > 0 for v in moments)  # the kept entries have some
        for value in moments:
            assert torch.count_nonzero(value[~mask]) == 0


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_masked_entries_stay_exactly_zero_while_training_on(name):
    model = _two_layer()
    optimizer = OPTIMIZERS[name](model.parameters())
    _train(model, optimizer, 5, seed=1)
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks, optimizer)
    _train(model, optimizer, 20, seed=2)
    for layer, mask in masks.items():
        module = model.get_submodule(layer)
        assert torch.count_nonzero(module.weight_orig[~mask]) == 0
        for key, value in optimizer.state[module.weight_orig].items():
            if key != "step":
                assert torch.count_nonzero(value[~mask]) == 0


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_zeroing_the_masked_state_leaves_the_unmasked_trajectory_identical(name):
    trained = []
    for with_optimizer in (True, False):
        model = _two_layer()
        optimizer = OPTIMIZERS[name](model.parameters())
        _train(model, optimizer, 5, seed=1)
        masks = magnitude_masks(model, 0.5)
        apply_masks(model, masks, optimizer if with_optimizer else None)
        _train(model, optimizer, 20, seed=2)
        apply_masks(model, magnitude_masks(model, 0.75), optimizer if with_optimizer else None)
        _train(model, optimizer, 20, seed=3)
        trained.append(model)
    fixed, unfixed = trained
    for layer in ("0", "2"):
        a, b = fixed.get_submodule(layer), unfixed.get_submodule(layer)
        kept = a.weight_mask.bool()
        assert torch.equal(a.weight_mask, b.weight_mask)
        assert torch.equal(effective_weight(a), effective_weight(b))  # bit for bit
        assert torch.equal(a.weight_orig[kept], b.weight_orig[kept])
        assert torch.equal(a.bias, b.bias)
    first = unfixed.get_submodule("0")
    pruned = ~first.weight_mask.bool()
    assert torch.count_nonzero(first.weight_orig[pruned]) > 0  # what the fix removes: drift
    assert torch.count_nonzero(fixed.get_submodule("0").weight_orig[pruned]) == 0


def test_zero_masked_state_leaves_other_state_alone():
    model = _two_layer()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    apply_masks(model, magnitude_masks(model, 0.5))
    orig = model.get_submodule("0").weight_orig
    optimizer.state[orig]["v"] = torch.ones_like(orig)  # e.g. a Bregman subgradient
    zero_masked_state(optimizer, model)
    assert torch.equal(optimizer.state[orig]["v"], torch.ones_like(orig))


def _conv_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _train_images(model, optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 2, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _product_masks(model: nn.Module, masks) -> None:
    """torch's own CustomFromMask form, weight_orig zeroed where masked (as apply_masks)."""
    for name, mask in masks.items():
        module = model.get_submodule(name)
        prune.custom_from_mask(module, "weight", mask)
        with torch.no_grad():
            module.weight_orig.masked_fill_(~mask, 0.0)


@pytest.mark.parametrize("net", ["linear", "conv"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_zeroed_mask_trains_the_same_numbers_as_the_product_form(name, net):
    build, train = (_two_layer, _train) if net == "linear" else (_conv_net, _train_images)
    states = []
    for form in ("product", "zeroed"):
        model = build()
        optimizer = OPTIMIZERS[name](model.parameters())
        train(model, optimizer, 3, seed=1)
        masks = magnitude_masks(model, 0.6)
        if form == "product":
            _product_masks(model, masks)
        else:
            apply_masks(model, masks)
            assert all(isinstance(h, ZeroedMask) for h in model[0]._forward_pre_hooks.values())
        zero_masked_state(optimizer, model)
        train(model, optimizer, 15, seed=2)
        states.append(model.state_dict())
    product, zeroed = states
    assert product.keys() == zeroed.keys()
    for key in product:  # weight_orig, weight_mask, bias: bit for bit
        assert torch.equal(product[key], zeroed[key]), key


def test_zeroed_mask_rezeroes_a_masked_entry_that_an_unzeroed_optimizer_moved():
    """apply_masks without the optimizer leaves Adam's moments: the forward pass still uses
    zero there, as the product form does, so both train the same effective weights."""
    trained = []
    for form in ("product", "zeroed"):
        model = _two_layer()
        optimizer = OPTIMIZERS["adam"](model.parameters())
        _train(model, optimizer, 5, seed=1)
        masks = magnitude_masks(model, 0.5)
        _product_masks(model, masks) if form == "product" else apply_masks(model, masks)
        _train(model, optimizer, 10, seed=2)
        trained.append(model)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(trained[0](x), trained[1](x))
    for layer in ("0", "2"):
        a, b = trained[0].get_submodule(layer), trained[1].get_submodule(layer)
        assert torch.equal(effective_weight(a), effective_weight(b))
        assert torch.count_nonzero(effective_weight(b)[~b.weight_mask.bool()]) == 0


def test_zeroed_mask_keeps_masking_the_gradient_of_a_copied_model():
    model = _two_layer()
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1), 2, seed=1)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        _train(copied, torch.optim.SGD(copied.parameters(), lr=0.1, momentum=0.9), 5, seed=2)
        for layer, mask in masks.items():
            module = copied.get_submodule(layer)
            assert torch.count_nonzero(module.weight_orig[~mask]) == 0
            assert torch.count_nonzero(module.weight_orig.grad[~mask]) == 0
            assert torch.count_nonzero(module.weight_orig.grad[mask]) > 0
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), 5, seed=3)
    for layer, mask in masks.items():  # the original keeps its own gradient mask
        module = model.get_submodule(layer)
        assert torch.count_nonzero(module.weight_orig[~mask]) == 0
        assert torch.count_nonzero(module.weight_orig.grad[~mask]) == 0


def test_zeroed_mask_comes_off_with_prune_remove():
    model = _two_layer()
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1), 2, seed=1)
    make_permanent(model)
    first = model.get_submodule("0")
    assert not prune.is_pruned(model) and not hasattr(first, "weight_mask")
    assert torch.count_nonzero(first.weight[~masks["0"]]) == 0  # pruned, permanently
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1), 2, seed=2)
    assert torch.count_nonzero(first.weight[~masks["0"]]) > 0  # no mask on the gradient now


def test_effective_weights_are_the_current_ones_after_a_step():
    """Magnitude scores (gradual pruning between steps) read the weights after the last step,
    not the product the last forward pass computed before it."""
    model = _two_layer()
    apply_masks(model, magnitude_masks(model, 0.5))
    _train(model, torch.optim.SGD(model.parameters(), lr=0.5), 1, seed=1)
    for name, weight in effective_weights(model).items():
        module = model.get_submodule(name)
        assert torch.equal(weight, module.weight_mask * module.weight_orig.detach())
