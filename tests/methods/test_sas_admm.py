"""SAS-ADMM (ALGORITHMS.md section 4): schedules, symmetric dual updates, convergence region,
and a convex problem."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.core.sparsity import get_masks
from sparsebench.core.train import seed_everything
from sparsebench.methods import Context, build_method, method_params
from sparsebench.methods.sas_admm import SASADMM, _Minibatches, check_region, inner_steps, step_size
from sparsebench.util.errors import UsageError

# ALGORITHMS.md section 4.3 with the released M = 50, k0 = 50, q = 1.1, v = 25: M_k = M for
# k < k0, else ceil(c k^q) with c = M / k0^q, that is ceil(50 (k / 50)^1.1); eta_k = 1 / v for
# k < k0, else M (M + 1) / (v M_k (M_k + 1)) = 2550 / (25 M_k (M_k + 1)). By hand:
#   k = 51:  50 * 1.02^1.1 = 51.10  -> 52
#   k = 100: 50 * 2^1.1    = 107.18 -> 108;  eta = 2550 / (25 * 108 * 109) = 0.0086646
#   k = 120: 50 * 2.4^1.1  = 130.98 -> 131;  eta = 2550 / (25 * 131 * 132) = 0.0058987
#   k = 190: 50 * 3.8^1.1  = 217.14 -> 218;  eta = 2550 / (25 * 218 * 219) = 0.0021365
RELEASED = {"M": 50, "k0": 50, "q": 1.1}


def test_inner_steps_follow_the_schedule():
    steps = [inner_steps(k, **RELEASED) for k in (1, 49, 50, 51, 100, 120, 190)]
    assert steps == [50, 50, 50, 52, 108, 131, 218]


def test_step_size_follows_the_schedule():
    etas = [step_size(k, **RELEASED, v=25) for k in (1, 49, 50, 100, 120, 190)]
    assert etas == pytest.approx([0.04, 0.04, 0.04, 0.0086646, 0.0058987, 0.0021365], rel=1e-4)


def test_the_default_suites_iterations_take_the_minibatches_params_yaml_states():
    """params.yaml: methods.sas_admm (M 100, k0 10, q 1.1, 23 iterations) = 3,344 minibatches:
    9 x 100 for k < 10, then ceil(100 (k / 10)^1.1) for k = 10..23."""
    by_hand = [100] * 10 + [112, 123, 134, 145, 157, 168, 180, 191, 203, 215, 227, 239, 250]
    assert [inner_steps(k, 100, 10, 1.1) for k in range(1, 24)] == by_hand
    params = method_params("sas_admm", {"M": 100, "k0": 10, "q": 1.1, "iterations": 23,
                                        "last": 16})
    assert build_method("sas_admm", params).total_steps() == sum(by_hand) == 3344


@pytest.mark.parametrize("r, s", [(0.9, 1.09), (0.0, 1.0), (-0.5, 1.0), (0.2, 1.5)])
def test_convergence_region_accepts(r, s):
    check_region(r, s)


@pytest.mark.parametrize("r, s", [(1.0, 1.0), (0.9, 1.2), (-0.9, 0.5), (0.0, 1.7), (0.5, 0.0)])
def test_convergence_region_refuses_with_the_region_stated(r, s):
    with pytest.raises(ValueError, match=r"outside the convergence region .* allowed: r in "
                                         r"\(-1, 1\), s in \(0, \(1 \+ sqrt 5\) / 2\)"):
        check_region(r, s)


def test_params_outside_the_region_are_a_usage_error():
    with pytest.raises(UsageError, match=r"methods\.sas_admm: \(r, s\) = \(0\.9, 1\.5\) is "
                                         r"outside the convergence region"):
        method_params("sas_admm", {"r": 0.9, "s": 1.5})


def test_dual_step_is_the_symmetric_update():
    w = nn.Parameter(torch.tensor([1.0, -0.3, 0.02]))
    sas = SASADMM([w], [], beta=2.0, lam=0.4, r=0.5, s=1.2)
    Z0 = sas.Z[0].clone()
    U0 = torch.tensor([0.1, -0.2, 0.0])
    sas.U[0] = U0.clone()
    sas.W[0] = torch.tensor([0.8, -0.1, 0.05])
    sas.dual_step()
    W = torch.tensor([0.8, -0.1, 0.05])
    u_half = U0 - 0.5 * 2.0 * (W - Z0)
    x = W - u_half / 2.0
    Z = torch.sign(x) * torch.clamp(x.abs() - 0.4 / 2.0, min=0)
    torch.testing.assert_close(sas.Z[0], Z)
    torch.testing.assert_close(sas.U[0], u_half - 1.2 * 2.0 * (W - Z))
    torch.testing.assert_close(w.detach(), W)  # W goes back into the network


def test_sparse_least_squares_residual_falls():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(100, 10, generator=g)
    x_star = torch.zeros(10)
    x_star[[1, 6]] = torch.tensor([2.0, -1.5])
    b = A @ x_star
    w = nn.Parameter(torch.randn(10, generator=g))
    sas = SASADMM([w], [], beta=1.0, lam=0.01, r=0.9, s=1.09)
    residuals = []
    for k in range(1, 41):
        h, eta = sas.begin(), step_size(k, 20, 10, 1.1, 10)
        for t in range(1, inner_steps(k, 20, 10, 1.1) + 1):
            sas.set_md(t)
            w.grad = None
            (0.5 * ((A @ w - b) ** 2).mean()).backward()
            sas.inner_step(t, eta, h)
        residuals.append(sas.dual_step()["primal_residual"])
    assert residuals[-1] < 0.01 < residuals[0]
    assert (sas.Z[0].abs() > 0.1).nonzero().flatten().tolist() == [1, 6]
    torch.testing.assert_close(sas.Z[0], x_star, atol=0.05, rtol=0)


def test_ergodic_average_is_written_into_the_network():
    w = nn.Parameter(torch.zeros(2))
    sas = SASADMM([w], [], beta=1.0, lam=0.0, r=0.9, s=1.09)
    for value in (1.0, 3.0):
        sas.W[0] = torch.full((2,), value)
        sas.accumulate()
    sas.write_average()
    torch.testing.assert_close(w.detach(), torch.full((2,), 2.0))


def test_method_prunes_only_conv_layers_when_asked(tiny_data):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 4))
    params = method_params("sas_admm", {"target_sparsity": 0.75, "layer_types": "conv",
                                        "iterations": 3, "M": 3, "k0": 2, "last": 1,
                                        "batch_size": 32})
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, progress=False)
    curves = build_method("sas_admm", params).prune(model, ctx)
    masks = get_masks(model)
    assert int(masks["0"].sum()) == 9  # 36 conv weights at 75% sparsity
    assert bool(masks["3"].all())
    assert [r["inner_steps"] for r in curves] == [3, 3, 5]  # k = 3: ceil(3 * 1.5^1.1 = 4.69)
    assert {"primal_residual", "dual_residual", "z_sparsity", "val_accuracy"} <= set(curves[0])


def test_training_with_sas_admm_lowers_the_loss(tiny_data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = tiny_data["train"]
    before = F.cross_entropy(model(x), y).item()
    params = method_params("sas_admm", {"target_sparsity": 0.0, "iterations": 4, "M": 8,
                                        "k0": 2, "last": 2, "batch_size": 32, "v": 2.0,
                                        "beta": 0.01})
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, progress=False)
    build_method("sas_admm", params).prune(model, ctx)
    assert F.cross_entropy(model(x), y).item() < 0.5 * before


@pytest.mark.parametrize(("last", "averaged"), [(0, 4), (1, 4), (2, 3), (4, 1)])
def test_the_average_runs_over_the_iterations_from_last_on(tiny_data, monkeypatch, last,
                                                           averaged):
    """ALGORITHMS.md section 4: iterations k >= last (W_last included) of k = 1..4."""
    seen = []
    original = SASADMM.accumulate
    monkeypatch.setattr(SASADMM, "accumulate", lambda self: (seen.append(1), original(self)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    params = method_params("sas_admm", {"target_sparsity": 0.5, "iterations": 4, "M": 2,
                                        "k0": 2, "last": last, "batch_size": 32})
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, progress=False)
    build_method("sas_admm", params).prune(model, ctx)
    assert len(seen) == averaged


def test_z_init_w_starts_z_at_w_and_soft_threshold_at_s_of_w():
    w = nn.Parameter(torch.tensor([1.0, -0.3, 0.02]))
    assert SASADMM([w], [], beta=2.0, lam=0.4, r=0.5, s=1.2).Z[0].tolist() == \
        pytest.approx([1.0, -0.3, 0.02])
    assert SASADMM([w], [], beta=2.0, lam=0.4, r=0.5, s=1.2, z_init="soft_threshold").Z[0] \
        .tolist() == pytest.approx([0.8, -0.1, 0.0])  # S_{0.4/2}


def _pruned(tiny_data, **options) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    before = copy.deepcopy(model)
    params = method_params("sas_admm", {"target_sparsity": 0.5, "iterations": 2, "M": 3,
                                        "k0": 2, "last": 1, "batch_size": 32, **options})
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, progress=False)
    build_method("sas_admm", params).prune(model, ctx)
    return before, model


def test_biases_stay_frozen_unless_train_non_weights(tiny_data):
    before, frozen = _pruned(tiny_data)  # the authors' default
    for name in ("1.bias", "3.bias"):
        assert torch.equal(frozen.state_dict()[name], before.state_dict()[name]), name
    before, trained = _pruned(tiny_data, train_non_weights=True)
    assert not torch.equal(trained.state_dict()["1.bias"], before.state_dict()["1.bias"])


def test_sampling_with_replacement_draws_independent_minibatches(tiny_data):
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=torch.Generator().manual_seed(0), seed=0)
    n = len(tiny_data["train"][1])  # 256 samples, batches of 64: 4 a pass
    without = _Minibatches(ctx, 64, torch.device("cpu"), replacement=False)
    seen = torch.cat([y for _, y, _ in without.iteration(4)])
    assert sorted(seen.tolist()) == sorted(tiny_data["train"][1].tolist())  # a permutation
    ctx.generator.manual_seed(0)
    expected = torch.randint(n, (64,), generator=torch.Generator().manual_seed(0))
    x, y, n = next(_Minibatches(ctx, 64, torch.device("cpu"), replacement=True).iteration(1))
    assert n == 64
    assert torch.equal(y, tiny_data["train"][1][expected])
    assert torch.equal(x, tiny_data["train"][0][expected])


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("z_init", "zero", "'w' or 'soft_threshold'"),
    ("sampling", "stratified", "'with_replacement' or 'without_replacement'"),
    ("train_non_weights", "sometimes", "a valid boolean, unable to interpret input"),
])
def test_an_unknown_fidelity_option_is_refused(key, value, allowed):
    with pytest.raises(UsageError, match=rf"^methods\.sas_admm\.{key}: '{value}' is not "
                                         rf"allowed; input should be {allowed}$"):
        method_params("sas_admm", {key: value})
