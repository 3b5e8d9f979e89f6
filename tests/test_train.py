import math
import re

import pytest
import torch
from torch import nn

from sparsebench.core.schema import OptimizerParams, validate
from sparsebench.core.train import (
    Phase,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
    resolve_device,
    seed_everything,
)
from sparsebench.util.errors import UsageError


def _model():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _train(tiny_data, seed=0, epochs=3, **optim):
    generator = seed_everything(seed)
    model = _model()
    phase = Phase(epochs, 32, OptimizerParams(**{"lr": 0.1, "momentum": 0.9, **optim}))
    curves = fit(model, tiny_data["train"], tiny_data["val"], phase, generator=generator,
                 device=torch.device("cpu"), progress=False)
    return model, curves


def test_training_learns_the_tiny_problem(tiny_data):
    _, curves = _train(tiny_data, epochs=5)
    assert curves[-1]["train_loss"] < curves[0]["train_loss"]
    assert curves[-1]["val_accuracy"] > 0.9


def test_same_seed_gives_identical_numbers(tiny_data):
    a, ca = _train(tiny_data, seed=3)
    b, cb = _train(tiny_data, seed=3)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    strip = lambda c: [{k: v for k, v in r.items() if k != "seconds"} for r in c]  # noqa: E731
    assert strip(ca) == strip(cb)


def test_different_seed_gives_different_weights(tiny_data):
    a, _ = _train(tiny_data, seed=1)
    b, _ = _train(tiny_data, seed=2)
    assert not torch.equal(a[1].weight, b[1].weight)


def test_curves_have_one_row_per_epoch_with_all_figures(tiny_data):
    _, curves = _train(tiny_data, epochs=2)
    assert [r["epoch"] for r in curves] == [1, 2]
    assert set(curves[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss",
                              "val_accuracy", "sparsity", "lr", "seconds"}
    assert curves[0]["sparsity"] == 0.0


def test_evaluate_matches_a_hand_count(tiny_data):
    model = _model()
    x, y = tiny_data["val"]
    loss, acc = evaluate(model, x, y, batch_size=7)
    logits = model(x)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_cosine_schedule_decays_to_zero():
    opt = make_optimizer([nn.Parameter(torch.zeros(1))], OptimizerParams(lr=1.0))
    sched = make_scheduler(opt, OptimizerParams(lr=1.0, schedule="cosine"), epochs=2,
                           steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_multiplies_by_gamma_each_step_size():
    cfg = OptimizerParams(lr=1.0, schedule="step", step_size=1, gamma=0.5)
    opt = make_optimizer([nn.Parameter(torch.zeros(1))], cfg)
    sched = make_scheduler(opt, cfg, epochs=3, steps_per_epoch=2)
    lrs = []
    for _ in range(6):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25, 0.125])


def test_milestones_match_torch_multisteplr_epoch_by_epoch():
    """The released SAS-ADMM retrain: lr 0.1, x0.1 at epochs 100 and 150 (here 3 and 5)."""
    cfg = OptimizerParams(lr=0.1, schedule="step", milestones=(3, 5), gamma=0.1)
    ours = make_optimizer([nn.Parameter(torch.zeros(1))], cfg)
    sched = make_scheduler(ours, cfg, epochs=7, steps_per_epoch=4)
    ref = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref_sched = torch.optim.lr_scheduler.MultiStepLR(ref, milestones=[3, 5], gamma=0.1)
    for _ in range(7):
        for _ in range(4):
            assert ours.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"])
            ours.step()
            sched.step()
        ref.step()
        ref_sched.step()
    assert ours.param_groups[0]["lr"] == pytest.approx(0.001)


@pytest.mark.parametrize("bad, message", [
    ({"schedule": "cosine", "milestones": [3]}, "milestones [3] need schedule: step (got cosine)"),
    ({"schedule": "step", "milestones": [5, 3]}, "milestones [5, 3] are not increasing"),
    ({"schedule": "step", "milestones": [0, 3]}, "greater than or equal to 1"),
])
def test_bad_milestones_are_refused_in_one_line(bad, message):
    from sparsebench.core.schema import validate
    from sparsebench.util.errors import UsageError

    with pytest.raises(UsageError, match=re.escape(message)) as info:
        validate(OptimizerParams, bad, prefix="retrain.optimizer.")
    assert str(info.value).startswith("retrain.optimizer")
    assert "\n" not in str(info.value)


def test_adam_is_available():
    opt = make_optimizer([nn.Parameter(torch.zeros(1))], OptimizerParams(name="adam", lr=1e-3))
    assert isinstance(opt, torch.optim.Adam)


def test_unknown_optimizer_is_refused():
    with pytest.raises(UsageError, match=r"^pretrain\.optimizer\.name: 'lion' is not allowed"):
        validate(OptimizerParams, {"name": "lion"}, prefix="pretrain.optimizer.")


def test_device_auto_is_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_refused():
    with pytest.raises(UsageError, match="device: 'cuda' is not available"):
        resolve_device("cuda")


def test_diverging_loss_stops_with_a_message(tiny_data):
    x, y = tiny_data["train"]
    with pytest.raises(FloatingPointError, match="training loss is nan at epoch 1"):
        fit(_model(), (x * float("nan"), y), tiny_data["val"], Phase(1, 32, OptimizerParams()),
            generator=seed_everything(0), device=torch.device("cpu"), progress=False)


def test_after_step_hook_sees_every_step(tiny_data):
    seen = []
    fit(_model(), tiny_data["train"], tiny_data["val"], Phase(2, 64, OptimizerParams()),
        generator=seed_everything(0), device=torch.device("cpu"), after_step=seen.append,
        progress=False)
    assert seen == list(range(1, 2 * 256 // 64 + 1))
