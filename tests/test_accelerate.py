"""GPU-ready options (``execution.precision``, ``channels_last``, ``compile``;
`sparsebench.core.accelerate`) and the inputs refused under torchrun, on the CPU."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import small_params
from torch import nn

from sparsebench.core import accelerate
from sparsebench.core.accelerate import Options
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.train import Phase, evaluate, fit, seed_everything
from sparsebench.util.errors import UsageError


@pytest.fixture
def options():
    """Set the process's options for one test; the defaults again afterwards."""
    yield accelerate.configure
    accelerate.configure(Options())


def tiny_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64, 4))


def train(model: nn.Module, data, **kwargs) -> list[dict]:
    return fit(model, data["train"], data["val"], Phase(3, 32, OptimizerParams(lr=0.1)),
               generator=seed_everything(0), device=torch.device("cpu"), progress=False,
               **kwargs)


def test_bf16_on_the_cpu_trains_a_correct_model_and_keeps_fp32_state(options, tiny_mlp,
                                                                      tiny_data):
    """Autocast bf16: the loss falls, the accuracy is far above chance (0.25), and weights,
    masks and ADMM's Z and U stay float32; the numbers are not the fp32 run's."""
    from sparsebench.core.sparsity import apply_masks, get_masks
    from sparsebench.methods import ADMM

    reference = tiny_conv()
    train(reference, tiny_data)
    options(Options(precision="bf16"))
    model = tiny_conv()
    apply_masks(model, {"3": torch.rand(4, 64, generator=torch.Generator().manual_seed(0))
                        > 0.5})
    admm = ADMM.for_model(model, rho=1e-3, sparsity=0.5)
    curves = train(model, tiny_data, after_backward=admm.add_penalty_grad)
    assert curves[-1]["train_loss"] < curves[0]["train_loss"]
    assert evaluate(model, *tiny_data["val"])[1] > 0.8
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(m.dtype == torch.bool or m.dtype == torch.float32
               for m in get_masks(model).values())
    assert all(t.dtype == torch.float32 for t in (*admm.Z.values(), *admm.U.values()))
    assert not torch.equal(model[0].weight, reference[0].weight)  # autocast was on


def test_channels_last_trains_nhwc_weights_to_the_same_model(options, tiny_data):
    reference = tiny_conv()
    train(reference, tiny_data)
    options(Options(channels_last=True))
    model = tiny_conv()
    train(model, tiny_data)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model[0].weight, reference[0].weight, rtol=1e-4, atol=1e-5)


def test_the_defaults_change_nothing(tiny_data):
    assert accelerate.current() == Options() and Options().default
    a, b = tiny_conv(), tiny_conv()
    train(a, tiny_data)
    train(b, tiny_data)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def write(tmp_path, **execution) -> str:
    path = small_params(tmp_path, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["execution"].update(execution)
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_channels_last_is_refused_for_an_mlp(tmp_path):
    from sparsebench.suite.load import load_params

    with pytest.raises(UsageError, match=r"^execution.channels_last: true needs a "
                                         r"convolutional model; MLP has no convolution"):
        load_params(write(tmp_path, channels_last=True))


def test_a_precision_other_than_fp32_or_bf16_is_refused(tmp_path):
    from sparsebench.suite.load import load_params

    with pytest.raises(UsageError, match=r"^execution.precision: .*fp16.*'fp32' or 'bf16'"):
        load_params(write(tmp_path, precision="fp16"))


def test_bf16_on_a_device_without_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(UsageError, match=r"^execution.precision: 'bf16' is not supported on "
                                         r"cuda.*allowed: fp32$"):
        accelerate.check(Options(precision="bf16"), torch.device("cuda"), tiny_conv())
    accelerate.check(Options(precision="bf16"), torch.device("cpu"), tiny_conv())


def test_compile_where_it_cannot_run_is_refused(tmp_path, monkeypatch):
    """No C++ compiler for inductor's CPU backend: refused at load_params, one line."""
    from sparsebench.suite.load import load_params

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(UsageError, match=r"^execution.compile: true cannot run here \(no C\+\+ "
                                         r"compiler .*no-such-compiler.*allowed: false$"):
        load_params(write(tmp_path, compile=True))


def test_calibrate_and_tune_are_refused_under_torchrun(tmp_path, monkeypatch, capsys):
    from sparsebench.pipeline.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for stage in (["calibrate", "--method", "grda"], ["tune", "--method", "gmp"]):
        assert main([*stage, "--params", write(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith(f"sparsebench: error: {stage[0]}: cannot run under torchrun")


def test_a_batch_norm_model_on_the_cpu_is_refused_under_torchrun(tmp_path):
    from sparsebench.pipeline.devices import check_distributed
    from sparsebench.suite.load import load_params

    path = small_params(tmp_path, model={"name": "resnet20", "args": {}},
                        tracking={"enabled": False})
    params, _ = load_params(path)
    with pytest.raises(UsageError, match=r"^model.name: 'resnet20' has batch norm, which cannot "
                                         r"train under torchrun on the CPU"):
        check_distributed(params, torch.device("cpu"))


def test_compile_trains_the_eager_model(options, tiny_data):
    """torch.compile (inductor, C++ on the CPU: about 20 s to compile) gives the eager
    model's weights up to rounding."""
    if accelerate.compile_unavailable(torch.device("cpu")):
        pytest.skip("torch.compile cannot run here")
    reference = tiny_conv()
    train(reference, tiny_data)
    options(Options(compile=True))
    model = tiny_conv()
    train(model, tiny_data)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
