"""``data.augment: crop_flip`` (`sparsebench.data.augment`): the exact pixels of a crop and a
flip, its draws from the run's generator, that it reaches every training batch and no other,
its bad values, and that a run with it is still resumable bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import Recording, prototype_data, small_params
from safetensors.torch import load_file
from torch import nn

from sparsebench.core.checkpoints import EpochCheckpoint
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.train import Phase, fit, seed_everything
from sparsebench.data.augment import Augment, crop_flip, crop_flip_at
from sparsebench.methods import METHODS, build_method
from sparsebench.methods.base import Context
from sparsebench.methods.sas_admm import _Minibatches
from sparsebench.pipeline.cli import main
from sparsebench.suite.load import load_params
from sparsebench.util.errors import UsageError

F = -1.0  # the padding value in the hand-made expectations
IMAGE = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # 1 2 3 / 4 5 6 / 7 8 9


@pytest.mark.parametrize("offset, flip, expected", [
    ((1, 1), False, [[1, 2, 3], [4, 5, 6], [7, 8, 9]]),  # the centre: the image itself
    ((1, 1), True, [[3, 2, 1], [6, 5, 4], [9, 8, 7]]),
    ((0, 0), False, [[F, F, F], [F, 1, 2], [F, 4, 5]]),
    ((2, 1), True, [[6, 5, 4], [9, 8, 7], [F, F, F]]),  # rows 2-4, cols 1-3, then mirrored
    ((0, 2), True, [[F, F, F], [F, 3, 2], [F, 6, 5]]),
])
def test_a_crop_and_flip_gives_the_hand_computed_pixels(offset, flip, expected):
    out = crop_flip_at(IMAGE, torch.tensor([offset]), torch.tensor([flip]), pad=1, fill=F)
    assert torch.equal(out, torch.tensor([[expected]]))


def test_a_pad_4_crop_of_a_32x32_image_shifts_it_and_fills_per_channel():
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fill = (-1.0, -2.0, -3.0)
    out = crop_flip_at(x, torch.tensor([[8, 0]]), torch.tensor([False]), pad=4, fill=fill)
    assert torch.equal(out[0, :, :28, 4:], x[0, :, 4:, :28])  # 4 rows down, 4 columns left
    for channel, value in enumerate(fill):
        assert (out[0, channel, 28:, :] == value).all()  # the bottom 4 rows: padding
        assert (out[0, channel, :, :4] == value).all()  # the left 4 columns: padding


def test_the_output_keeps_shape_dtype_and_device_and_leaves_the_input_alone():
    x = torch.randn(5, 3, 32, 32)
    before = x.clone()
    out = crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.is_contiguous()
    assert torch.equal(x, before)


def test_the_draws_come_from_the_generator_in_the_documented_order():
    x = torch.randn(7, 3, 32, 32)
    g = torch.Generator().manual_seed(3)
    twin = torch.Generator().manual_seed(3)
    out = crop_flip(x, g, fill=0.5)
    offsets = torch.randint(0, 9, (7, 2), generator=twin)
    flips = torch.randint(0, 2, (7,), generator=twin, dtype=torch.bool)
    assert torch.equal(out, crop_flip_at(x, offsets, flips, pad=4, fill=0.5))
    assert torch.equal(g.get_state(), twin.get_state())  # nothing else drawn


def test_the_same_generator_state_gives_the_same_batch_and_another_state_another():
    x = torch.randn(16, 3, 32, 32)
    a = crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, crop_flip(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, crop_flip(x, torch.Generator().manual_seed(2)))


def test_every_offset_and_both_flips_occur_about_equally_often():
    n = 4000
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    x = (100 * rows + cols).expand(n, 1, 32, 32)  # each pixel says where it came from
    out = crop_flip(x, torch.Generator().manual_seed(0), fill=-1.0)
    centre, right = out[:, 0, 16, 16], out[:, 0, 16, 17]  # always inside the image
    flipped = right < centre
    row = (centre // 100).long() - 12  # out[16] = x[16 + row - 4]
    col = (centre % 100).long() - torch.where(flipped, 11, 12)  # x[col + 31 - 16 - 4] if flipped
    for drawn in (row, col):
        counts = torch.bincount(drawn, minlength=9)
        assert len(counts) == 9 and (counts > 0).all()
        assert ((counts / n - 1 / 9).abs() < 0.03).all(), counts
    assert abs(flipped.float().mean().item() - 0.5) < 0.03


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_on_a_gpu_the_result_is_the_cpu_one():
    x = torch.randn(8, 3, 32, 32)
    cpu = crop_flip(x, torch.Generator().manual_seed(0))
    gpu = crop_flip(x.cuda(), torch.Generator().manual_seed(0))
    assert torch.equal(cpu, gpu.cpu())


def test_for_data_pads_with_the_normalised_black_pixel_and_none_is_nothing():
    assert Augment.for_data("none", (0.5,), (0.25,)) is None
    augment = Augment.for_data("crop_flip", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert augment.fill == pytest.approx((-0.4914 / 0.2470, -0.4822 / 0.2435, -0.4465 / 0.2616))
    assert augment.pad == 4


class Spy:
    """An augmentation that records what it is given and changes nothing."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.seen.append(x.clone())
        return x


def _rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r.tolist()) for r in x.flatten(1)}


def test_fit_augments_every_training_batch_and_never_the_validation_split(tiny_data):
    spy = Spy()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    fit(model, tiny_data["train"], tiny_data["val"], Phase(2, 64, OptimizerParams()),
        generator=seed_everything(0), device=torch.device("cpu"), augment=spy)
    assert len(spy.seen) == 2 * 4  # 2 epochs of 256 / 64 batches
    for epoch in (spy.seen[:4], spy.seen[4:]):
        assert sorted(_rows(torch.cat(epoch))) == sorted(_rows(tiny_data["train"][0]))
    assert not _rows(torch.cat(spy.seen)) & _rows(tiny_data["val"][0])


def test_sas_admm_minibatches_are_augmented_after_they_are_drawn(tiny_data):
    for replacement in (True, False):
        spy = Spy()
        ctx = Context(train=tiny_data["train"], val=tiny_data["val"],
                      device=torch.device("cpu"), generator=seed_everything(0), seed=0,
                      augment=spy)
        plain = Context(train=tiny_data["train"], val=tiny_data["val"],
                        device=torch.device("cpu"), generator=seed_everything(0), seed=0)
        ours = _Minibatches(ctx, 32, torch.device("cpu"), replacement=replacement).iteration(10)
        theirs = _Minibatches(plain, 32, torch.device("cpu"), replacement=replacement
                              ).iteration(10)
        for _ in range(10):  # past one pass (8 batches) without replacement
            x, _, _ = next(ours)
            assert torch.equal(x, spy.seen[-1])
            assert torch.equal(x, next(theirs)[0])  # a spy draws nothing: the same batches
        assert len(spy.seen) == 10


def test_sas_admm_prune_sends_every_inner_step_through_the_augmentation(tiny_data):
    spy = Spy()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    method = build_method("sas_admm", METHODS["sas_admm"].Params(
        target_sparsity=0.8, iterations=3, M=4, k0=2, last=1, batch_size=32))
    ctx = Context(train=tiny_data["train"], val=tiny_data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, augment=spy)
    curves = method.prune(model, ctx)
    assert len(spy.seen) == sum(row["inner_steps"] for row in curves)
    assert not _rows(torch.cat(spy.seen)) & _rows(tiny_data["val"][0])


# Resume with crop_flip on: from every saved epoch (the points a kill restarts from), the
# weights and curves of the run never interrupted (as test_resume, with the augmentation).
RESUME = {
    "gmp": {"target_sparsity": 0.8, "epochs": 3, "start_epoch": 0, "end_epoch": 2,
            "frequency": 3, "batch_size": 32},
    "sas_admm": {"target_sparsity": 0.8, "iterations": 4, "M": 5, "k0": 2, "last": 1,
                 "batch_size": 32},
}


def _prune(key: str, data: dict, checkpoint: EpochCheckpoint | None, augment: Augment | None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 12), nn.ReLU(), nn.Linear(12, 4))
    method = build_method(key, METHODS[key].Params(method=key, **RESUME[key]))
    ctx = Context(train=data["train"], val=data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, checkpoint=checkpoint, augment=augment)
    curves = method.prune(model, ctx)
    return model, [{k: v for k, v in row.items() if k != "seconds"} for row in curves]


def _rgb_data() -> dict:
    data = prototype_data(128, 32)  # 1x4x4: three channels of it, one per colour
    return {s: (x.repeat(1, 3, 1, 1), y) for s, (x, y) in data.items()}


@pytest.mark.parametrize("key", RESUME)
def test_resume_with_crop_flip_gives_the_uninterrupted_result(key, tmp_path):
    data, augment = _rgb_data(), Augment("crop_flip", (-1.0, -2.0, -3.0), pad=1)
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    model, curves = _prune(key, data, Recording(tmp_path / "full.pt", snapshots), augment)
    _, plain_curves = _prune(key, data, None, None)
    assert plain_curves != curves  # the augmentation changed the run
    saved = sorted(snapshots.iterdir())
    assert len(saved) >= 3
    for snapshot in saved:
        path = tmp_path / "resume.pt"
        shutil.copy(snapshot, path)
        resumed, resumed_curves = _prune(key, data, EpochCheckpoint(path), augment)
        assert resumed_curves == curves, snapshot.name
        for (name, a), (_, b) in zip(model.state_dict().items(),
                                     resumed.state_dict().items(), strict=True):
            assert torch.equal(a, b), f"{key}: {name} differs after resuming {snapshot.name}"


# params.yaml: the key's values, and the shape rule.
def _params(workspace: Path, **data) -> Path:
    path = small_params(workspace, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["data"].update(data)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("data, expected", [
    ({"augment": "flip"}, "data.augment: 'flip' is not allowed; input should be 'none' or "
                          "'crop_flip'"),
    ({"augment": "crop_flip", "dataset": "mnist"},
     "data.augment: 'crop_flip' is not allowed for data.dataset mnist (images 1x28x28); "
     "allowed: none, or a data set of 3x32x32 images (cifar10)"),
    ({"augment": "crop_flip", "dataset": "fashion_mnist"},
     "data.augment: 'crop_flip' is not allowed for data.dataset fashion_mnist (images 1x28x28)"),
    ({"augment": "crop_flip", "dataset": "synthetic", "synthetic_shape": [3, 28, 28]},
     "data.augment: 'crop_flip' is not allowed for data.dataset synthetic (images 3x28x28)"),
])
def test_a_bad_augment_is_one_line_and_exit_2(workspace, capsys, data, expected):
    path = _params(workspace, **data)
    assert main(["check-params", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    with pytest.raises(UsageError, match=r"^data\.augment: "):
        load_params(path)


@pytest.mark.parametrize("data", [
    {"augment": "crop_flip", "dataset": "cifar10"},
    {"augment": "crop_flip", "dataset": "synthetic", "synthetic_shape": [3, 32, 32]},
    {"augment": "none", "dataset": "mnist"},
    {},  # the default: none
])
def test_crop_flip_on_3x32x32_images_and_none_anywhere_are_accepted(workspace, data):
    path = _params(workspace, **data)
    assert main(["check-params", "--params", str(path)]) == 0
    params, _ = load_params(path)
    assert params.data.augment == data.get("augment", "none")


def _pretrain(root: Path, augment: str) -> dict:
    path = small_params(root, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["seeds"] = [0]
    raw["data"].update(dataset="synthetic", synthetic_shape=[3, 32, 32], synthetic_classes=4,
                       val_size=32, limit=64, augment=augment)
    raw["pretrain"].update(epochs=1, batch_size=32)
    raw["budget"] = None
    path.write_text(yaml.safe_dump(raw))
    for stage in ("prepare", "pretrain"):
        assert main([stage, "--params", str(path)]) == 0
    seed = root / "runs" / "pretrain" / "seed0"
    return {"model": load_file(seed / "model.safetensors"),
            "curves": json.loads((seed / "curves.json").read_text())}


def test_a_3x32x32_pretrain_with_crop_flip_runs_and_differs_from_none(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = {}
    for augment in ("none", "crop_flip", "crop_flip"):
        root = tmp_path / f"{augment}-{len(runs)}"
        root.mkdir()
        monkeypatch.chdir(root)
        monkeypatch.setenv("SPARSEBENCH_ROOT", str(root))
        runs[root.name] = _pretrain(root, augment)
    none, flip, again = runs.values()
    assert flip["curves"][0]["epoch"] == 1
    assert any(not torch.equal(none["model"][k], flip["model"][k]) for k in none["model"])
    assert all(torch.equal(flip["model"][k], again["model"][k]) for k in flip["model"])


def test_the_resnet_suite_trains_with_the_authors_augmentation_and_the_others_without():
    root = Path(__file__).resolve().parents[1]
    for suite, expected in [(root / "pipelines" / "resnet32-cifar10", "crop_flip"),
                            (root, "none"), (root / "pipelines" / "lenet5-mnist", "none")]:
        params, _ = load_params(suite / "params.yaml")
        assert params.data.augment == expected, suite.name
