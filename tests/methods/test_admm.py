"""ADMM pruning: the invariants of ALGORITHMS.md section 2 and a convex problem with a known
sparse answer."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.core.schema import OptimizerParams
from sparsebench.core.sparsity import get_masks, keep_count
from sparsebench.core.train import Phase, fit, seed_everything
from sparsebench.methods import ADMM, Context, build_method, method_params


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _w_step(model, admm, data, steps=5, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y) + admm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_z_keeps_exactly_k_per_layer_after_every_z_step(tiny_data):
    model = _mlp()
    admm = ADMM.for_model(model, sparsity={"1": 0.9, "3": 0.5}, rho=0.1)
    expected = {"1": keep_count(16 * 32, 0.9), "3": keep_count(32 * 4, 0.5)}
    assert {n: int((z != 0).sum()) for n, z in admm.Z.items()} == expected
    for _ in range(4):
        _w_step(model, admm, tiny_data["train"])
        admm.step()
        assert {n: int((z != 0).sum()) for n, z in admm.Z.items()} == expected


def test_u_is_the_running_sum_of_residuals(tiny_data):
    model = _mlp()
    admm = ADMM.for_model(model, sparsity=0.8, rho=0.1)
    total = {n: torch.zeros_like(w) for n, w in admm.weights.items()}
    for _ in range(4):
        _w_step(model, admm, tiny_data["train"])
        admm.step()
        for n, w in admm.weights.items():
            total[n] += w.detach() - admm.Z[n]
    for n in total:
        torch.testing.assert_close(admm.U[n], total[n], rtol=0, atol=1e-6)


def test_rho_zero_makes_the_w_step_plain_training(tiny_data):
    def train(with_admm: bool):
        model = _mlp()
        admm = ADMM.for_model(model, sparsity=0.9, rho=0.0)
        fit(model, tiny_data["train"], tiny_data["val"], Phase(2, 32, OptimizerParams(lr=0.1)),
            generator=seed_everything(0), device=torch.device("cpu"), progress=False,
            after_backward=admm.add_penalty_grad if with_admm else None)
        return model

    a, b = train(True), train(False)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_l1_z_step_is_the_soft_threshold():
    w = nn.Parameter(torch.tensor([0.5, -0.05, 0.2, -1.0]))
    admm = ADMM({"w": w}, rho=2.0, lam=0.4)  # threshold lam / rho = 0.2
    admm.U["w"] = torch.tensor([0.0, 0.0, 0.05, 0.1])
    admm.step()
    x = torch.tensor([0.5, -0.05, 0.25, -0.9])
    expected = torch.sign(x) * torch.clamp(x.abs() - 0.2, min=0)
    torch.testing.assert_close(admm.Z["w"], expected)
    assert admm.Z["w"][1] == 0


def test_rho_grows_by_its_factor_up_to_the_cap():
    admm = ADMM({"w": nn.Parameter(torch.ones(4))}, rho=1.0, keep={"w": 2}, rho_growth=2.0,
                rho_max=5.0)
    used = [admm.step()["rho"] for _ in range(5)]
    assert used == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_state_dict_round_trip_continues_identically(tiny_data):
    model = _mlp()
    admm = ADMM.for_model(model, sparsity=0.7, rho=0.1, rho_growth=1.5)
    _w_step(model, admm, tiny_data["train"])
    admm.step()
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved = admm.state_dict()
    _w_step(model, admm, tiny_data["train"])
    first = admm.step()

    other = _mlp()
    other.load_state_dict(saved_model)
    resumed = ADMM.for_model(other, sparsity=0.7, rho=0.1, rho_growth=1.5)
    resumed.load_state_dict(saved)
    _w_step(other, resumed, tiny_data["train"])
    assert resumed.step() == first
    for n in admm.Z:
        assert torch.equal(admm.Z[n], resumed.Z[n]) and torch.equal(admm.U[n], resumed.U[n])


def test_bad_hyperparameters_are_refused():
    w = {"w": nn.Parameter(torch.ones(3))}
    with pytest.raises(ValueError, match="Invalid rho: -1"):
        ADMM(w, rho=-1, keep={"w": 1})
    with pytest.raises(ValueError, match=r"Invalid rho_growth: 0\.5"):
        ADMM(w, rho=1, keep={"w": 1}, rho_growth=0.5)


def test_sparse_least_squares_recovers_the_known_answer():
    """min ||A x - b||^2 s.t. card(x) <= 3, with b = A x* and x* 3-sparse."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(200, 20, generator=g)
    x_star = torch.zeros(20)
    x_star[[2, 7, 15]] = torch.tensor([1.5, -2.0, 1.0])
    b = A @ x_star
    model = nn.Linear(20, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(A, b).solution + 0.3 * torch.randn(20, generator=g))
        model.weight.add_(0.3 * torch.randn(1, 20, generator=g))
    admm = ADMM.for_model(model, sparsity=1 - 3 / 20, rho=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    residuals = []
    for _ in range(30):
        for _ in range(50):  # W-step: gradient descent on the augmented Lagrangian
            loss = 0.5 * ((model(A).squeeze(1) - b) ** 2).mean() + admm.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        residuals.append(admm.step()["primal_residual"])
    assert residuals[-1] < 1e-3 < residuals[0]
    assert residuals[-1] < residuals[len(residuals) // 2] < residuals[0]
    mask = admm.masks()[""]
    assert mask.flatten().nonzero().flatten().tolist() == [2, 7, 15]
    torch.testing.assert_close(admm.Z[""].flatten(), x_star, atol=1e-2, rtol=0)


def test_admm_method_prunes_to_layer_targets_and_logs_residuals(tiny_data):
    params = method_params("admm", {"layer_sparsity": {"1": 0.9, "3": 0.5}, "iterations": 3,
                                    "rho": 0.05, "batch_size": 32})
    model = _mlp()
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, progress=False)
    curves = build_method("admm", params).prune(model, ctx)
    assert [r["epoch"] for r in curves] == [1, 2, 3]
    assert {"primal_residual", "dual_residual", "rho", "z_sparsity"} <= set(curves[0])
    masks = get_masks(model)
    assert int(masks["1"].sum()) == keep_count(512, 0.9)
    assert int(masks["3"].sum()) == keep_count(128, 0.5)
    kept = keep_count(512, 0.9) + keep_count(128, 0.5)
    assert math.isclose(curves[0]["z_sparsity"], 1 - kept / 640, abs_tol=1e-9)


def test_admm_l1_final_mask_reaches_the_target(tiny_data):
    params = method_params("admm_l1", {"target_sparsity": 0.8, "iterations": 2, "lam": 1e-3,
                                       "batch_size": 32})
    model = _mlp()
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, progress=False)
    build_method("admm_l1", params).prune(model, ctx)
    for mask in get_masks(model).values():
        assert int(mask.sum()) == keep_count(mask.numel(), 0.8)


def test_the_penalty_gradient_added_after_backward_is_the_gradient_of_the_penalty():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    admm = ADMM.for_model(model, sparsity=0.6, rho=0.3)
    for _ in range(2):  # Z and U away from their start
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        admm.step()
    x = torch.randn(4, 6)
    model.zero_grad()
    (model(x).sum() + admm.penalty()).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    admm.add_penalty_grad()
    for got, want in zip((p.grad for p in model.parameters()), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("rescale", "expected"), [(False, [0.5, 0.5]), (True, [0.25, 0.25])])
def test_dual_rescale_keeps_the_unscaled_dual_when_rho_grows(rescale, expected):
    """Boyd et al. 2011, 3.4.1: U = y / rho, so rho 1 -> 2 halves U (y = rho U stays 0.5)."""
    w = nn.Parameter(torch.tensor([1.0, 0.5, 0.0, 0.0]))
    admm = ADMM({"w": w}, rho=1.0, keep={"w": 2}, rho_growth=2.0, dual_rescale=rescale)
    with torch.no_grad():
        w.copy_(torch.tensor([1.0, 0.5, 0.5, 0.5]))  # Z = P_2(W + 0) keeps 1.0 and one 0.5
    admm.step()
    u = admm.U["w"]
    assert admm.rho == 2.0
    assert sorted(u[u != 0].tolist()) == pytest.approx(expected)  # W - Z on the pruned 0.5


def test_dual_rescale_stops_when_rho_reaches_its_cap():
    w = nn.Parameter(torch.tensor([1.0, 0.5]))
    admm = ADMM({"w": w}, rho=1.0, keep={"w": 1}, rho_growth=2.0, rho_max=2.0,
                dual_rescale=True)
    admm.step()  # rho 1 -> 2: U = 0.5 / 2
    admm.step()  # rho stays 2: U += W - Z, not rescaled
    assert admm.U["w"].tolist() == pytest.approx([0.0, 0.25 + 0.5])
