import pytest
import torch
from torch import nn

from sparsebench.core.metrics import sparsity_summary
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.sparsity import get_masks, keep_count
from sparsebench.core.train import Phase, seed_everything
from sparsebench.methods import METHODS, Context, build_method, method_params
from sparsebench.methods.retrain import masked_retrain
from sparsebench.util.errors import UsageError

SMALL = {  # settings that keep each method's test to a second on the tiny problem
    "gmp": {"epochs": 2, "end_epoch": 1, "frequency": 2, "batch_size": 32},
    "admm": {"iterations": 2, "batch_size": 32},
    "admm_l1": {"iterations": 2, "batch_size": 32},
    "sas_admm": {"iterations": 3, "M": 4, "k0": 2, "last": 1, "batch_size": 32},
    **{m: {"epochs": 2, "batch_size": 32} for m in ("grda", "linbreg", "adabreg", "proxsgd")},
}
TARGETED = sorted(m for m in METHODS if "target_sparsity" in METHODS[m].Params.model_fields)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _ctx(tiny_data, seed=0):
    return Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                   generator=seed_everything(seed), seed=seed, progress=False)


def _pruned(name, tiny_data, **cfg):
    params = method_params(name, {**SMALL.get(name, {}), **cfg})
    model = _model()
    curves = build_method(name, params).prune(model, _ctx(tiny_data))
    return model, curves


@pytest.mark.parametrize("name", TARGETED)
def test_every_method_prunes_to_its_target(name, tiny_data):
    params = method_params(name, SMALL.get(name, {}))
    model, _ = _pruned(name, tiny_data)
    target = getattr(params, "target_sparsity", 0.0)
    for mask in get_masks(model).values():
        assert mask.sum().item() == keep_count(mask.numel(), target)
    assert sparsity_summary(model)["sparsity"] == pytest.approx(target, abs=0.01)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_masked_retrain_keeps_masked_entries_zero(name, tiny_data):
    model, _ = _pruned(name, tiny_data, **({"target_sparsity": 0.8} if name in TARGETED else {}))
    masks = get_masks(model)
    phase = Phase(2, 32, OptimizerParams(lr=0.05, momentum=0.9, weight_decay=1e-3))
    curves = masked_retrain(model, phase, _ctx(tiny_data, seed=1))
    assert len(curves) == 2
    assert get_masks(model).keys() == masks.keys()
    for layer, mask in masks.items():
        assert (model.get_submodule(layer).weight[~mask] == 0).all()


def test_retrain_with_zero_epochs_changes_nothing(tiny_data):
    model, _ = _pruned("magnitude", tiny_data, target_sparsity=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert masked_retrain(model, Phase(0, 32), _ctx(tiny_data)) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dense_leaves_the_model_untouched(tiny_data):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_method("dense", method_params("dense", {})).prune(model, _ctx(tiny_data))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gmp_raises_sparsity_gradually_then_holds(tiny_data):
    _, curves = _pruned("gmp", tiny_data, target_sparsity=0.9, epochs=4, end_epoch=3,
                        frequency=1)
    sparsities = [row["sparsity"] for row in curves]
    assert sparsities == sorted(sparsities)
    assert 0 < sparsities[0] < 0.9
    assert sparsities[-1] == pytest.approx(0.9, abs=0.01)


def test_gmp_keeps_accuracy_on_an_easy_problem(tiny_data):
    _, curves = _pruned("gmp", tiny_data, target_sparsity=0.5, epochs=3, end_epoch=2,
                        optimizer={"lr": 0.1, "momentum": 0.9})
    assert curves[-1]["val_accuracy"] > 0.9


def test_random_differs_from_magnitude(tiny_data):
    a, _ = _pruned("random", tiny_data, target_sparsity=0.5)
    b, _ = _pruned("magnitude", tiny_data, target_sparsity=0.5)
    assert not torch.equal(get_masks(a)["1"], get_masks(b)["1"])


def test_instance_name_refers_to_a_registered_method():
    params = method_params("gmp_90", {"method": "gmp", "target_sparsity": 0.9})
    assert build_method("gmp_90", params).name == "gmp"


def test_unknown_method_is_refused():
    with pytest.raises(UsageError, match=r"methods\.lottery: unknown name 'lottery'; allowed: "):
        method_params("lottery", {})


def test_unknown_method_under_an_instance_name_is_refused():
    with pytest.raises(UsageError, match=r"methods\.foo\.method: unknown name 'bar'"):
        method_params("foo", {"method": "bar"})


@pytest.mark.parametrize("value", [1.0, -0.5, 2])
def test_target_sparsity_out_of_range_is_refused(value):
    with pytest.raises(UsageError, match=rf"methods.magnitude.target_sparsity: {value!r} is not"):
        method_params("magnitude", {"target_sparsity": value})


def test_unknown_key_gets_a_suggestion():
    with pytest.raises(UsageError, match=r"methods\.gmp\.target_sparsty: unknown key; did you mean "
                                         "target_sparsity?"):
        method_params("gmp", {"target_sparsty": 0.9})


def test_gmp_schedule_must_fit_in_its_epochs():
    with pytest.raises(UsageError, match="start_epoch < end_epoch <= epochs"):
        method_params("gmp", {"epochs": 3, "end_epoch": 5})


@pytest.mark.parametrize("name", ["magnitude", "random", "gmp", "admm", "sas_admm"])
def test_layer_sparsity_overrides_the_target_per_layer(name, tiny_data):
    model, _ = _pruned(name, tiny_data, target_sparsity=0.5, layer_sparsity={"1": 0.9})
    masks = get_masks(model)
    assert int(masks["1"].sum()) == 51  # 512 weights at 90%: 460.8 -> 461 pruned
    assert int(masks["3"].sum()) == 64  # 128 weights at 50%


def test_unknown_layer_in_layer_sparsity_is_refused(tiny_data):
    with pytest.raises(UsageError, match=r"methods\.magnitude\.layer_sparsity\.fc9: unknown "
                                         r"layer; allowed: 1, 3"):
        _pruned("magnitude", tiny_data, layer_sparsity={"fc9": 0.9})


def test_layer_sparsity_with_global_scope_is_refused():
    with pytest.raises(UsageError, match="layer_sparsity needs scope: layer"):
        method_params("magnitude", {"scope": "global", "layer_sparsity": {"1": 0.5}})


def test_layer_sparsity_out_of_range_is_refused():
    with pytest.raises(UsageError, match=r"methods\.gmp\.layer_sparsity\.1: 1\.2 is not allowed"):
        method_params("gmp", {"layer_sparsity": {"1": 1.2}})


SPARSE_TRAINING = {  # settings that make each optimizer zero out weights on the tiny problem
    "grda": {"c": 0.5, "mu": 0.6, "lr": 0.1},
    "linbreg": {"lam": 0.5, "lr": 0.1, "init_density": 0.1},
    "adabreg": {"lam": 0.5, "lr": 0.01, "init_density": 0.1},
    "proxsgd": {"lam": 0.05, "lr": 0.1},
}


@pytest.mark.parametrize("name", sorted(SPARSE_TRAINING))
def test_sparse_training_mask_is_the_exact_zeros(name, tiny_data):
    model, curves = _pruned(name, tiny_data, **SPARSE_TRAINING[name])
    assert curves[-1]["sparsity"] > 0.2
    for layer, mask in get_masks(model).items():
        weight = model.get_submodule(layer).weight
        assert torch.equal(mask, model.get_submodule(layer).weight_orig != 0)
        assert (weight[~mask] == 0).all()
    assert sparsity_summary(model)["sparsity"] == pytest.approx(curves[-1]["sparsity"])


@pytest.mark.parametrize("name", sorted(SPARSE_TRAINING))
def test_sparse_training_starts_from_scratch_unless_told(name):
    assert build_method(name, method_params(name, {})).from_pretrained is False
    assert build_method(name, method_params(name, {"init": "pretrained"})).from_pretrained


def test_bregman_sparse_init_starts_sparse(tiny_data):
    _, curves = _pruned("linbreg", tiny_data, lam=0.5, lr=0.01, init_density=0.1, epochs=1)
    assert curves[0]["sparsity"] > 0.7


def test_grda_with_c_zero_leaves_weights_dense(tiny_data):
    _, curves = _pruned("grda", tiny_data, c=0.0)
    assert curves[-1]["sparsity"] == 0.0


def _gmp_with_its_optimizer(tiny_data):
    """gmp's prune phase; the model and the optimizer it trained with."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    seen = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: seen.append(opt))
    try:
        model, _ = _pruned("gmp", tiny_data, target_sparsity=0.8, epochs=3, end_epoch=2,
                           frequency=3, optimizer={"lr": 0.1, "momentum": 0.9})
    finally:
        handle.remove()
    return model, seen[-1]


def test_gmp_leaves_no_momentum_at_masked_entries(tiny_data):
    model, optimizer = _gmp_with_its_optimizer(tiny_data)
    for mask, module in zip(get_masks(model).values(), (model[1], model[3]), strict=True):
        buffer = optimizer.state[module.weight_orig]["momentum_buffer"]
        assert torch.count_nonzero(buffer[~mask]) == 0
        assert torch.count_nonzero(buffer[mask]) > 0


def test_gmp_result_is_the_same_without_zeroing_the_masked_state(tiny_data, monkeypatch):
    import sparsebench.core.sparsity as sparsity

    fixed, _ = _gmp_with_its_optimizer(tiny_data)
    monkeypatch.setattr(sparsity, "zero_masked_state", lambda optimizer, model: None)
    unfixed, optimizer = _gmp_with_its_optimizer(tiny_data)
    masked = ~get_masks(unfixed)["1"]
    assert torch.count_nonzero(optimizer.state[unfixed[1].weight_orig]["momentum_buffer"][masked])
    for a, b in zip(fixed.state_dict().values(), unfixed.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the final apply_masks re-zeroes the drifted weight_orig
