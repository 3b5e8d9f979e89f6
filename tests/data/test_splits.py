"""Tests of sparsebench.data.splits: building, saving and loading splits, and batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakes import (
    FAKE,
    N_TEST,
    N_TRAIN,
    accept_fake_mnist,
    image_index,
    one_line,
    sha256,
    write_files,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsebench import data
from sparsebench.util.errors import UsageError


@pytest.fixture
def raw_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    accept_fake_mnist(monkeypatch)
    return write_files(tmp_path / "raw", FAKE)


def test_build_splits_sizes_disjoint_and_test_untouched(raw_mnist: Path) -> None:
    splits = data.build_splits("mnist", raw_mnist, val_size=50, seed=1)
    assert {k: tuple(v.shape) for k, v in splits.items()} == {
        "train_x": (N_TRAIN - 50, 1, 28, 28),
        "train_y": (N_TRAIN - 50,),
        "val_x": (50, 1, 28, 28),
        "val_y": (50,),
        "test_x": (N_TEST, 1, 28, 28),
        "test_y": (N_TEST,),
    }
    assert all(splits[f"{s}_x"].dtype == torch.uint8 for s in data.SPLIT_NAMES)
    assert all(splits[f"{s}_y"].dtype == torch.int64 for s in data.SPLIT_NAMES)
    train_idx, val_idx = image_index(splits["train_x"]), image_index(splits["val_x"])
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(N_TRAIN))
    assert torch.equal(splits["train_y"], train_idx % 10)  # labels travel with their images
    assert torch.equal(splits["test_x"], data.read_idx(raw_mnist / "t10k-images-idx3-ubyte"))
    assert torch.equal(splits["test_y"], data.read_idx(raw_mnist / "t10k-labels-idx1-ubyte"))


def test_split_seed_determinism_and_limit(raw_mnist: Path) -> None:
    a = data.build_splits("mnist", raw_mnist, val_size=50, seed=1)
    b = data.build_splits("mnist", raw_mnist, val_size=50, seed=1)
    c = data.build_splits("mnist", raw_mnist, val_size=50, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        image_index(a["val_x"]).sort().values, image_index(c["val_x"]).sort().values
    )
    assert torch.equal(a["test_x"], c["test_x"])
    small = data.build_splits("mnist", raw_mnist, val_size=50, seed=1, limit=20)
    assert len(small["train_x"]) == 20 and len(small["test_y"]) == 20 and len(small["val_y"]) == 50
    assert torch.equal(small["train_x"], a["train_x"][:20])
    assert torch.equal(small["val_x"], a["val_x"])
    assert torch.equal(small["test_x"], a["test_x"][:20])


@pytest.mark.parametrize("val_size", [0, -1, N_TRAIN, N_TRAIN + 1, 2.5, True, "10"])
def test_val_size_out_of_range(raw_mnist: Path, val_size: object) -> None:
    with pytest.raises(UsageError) as exc:
        data.build_splits("mnist", raw_mnist, val_size=val_size, seed=0)  # type: ignore[arg-type]
    assert one_line(exc).startswith(
        f"data.val_size: {val_size!r} is out of range; allowed: an integer in [1, {N_TRAIN})"
    )


def test_bad_limit_and_missing_raw_files(raw_mnist: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^data\.limit: 0 is out of range"):
        data.build_splits("mnist", raw_mnist, val_size=5, seed=0, limit=0)
    with pytest.raises(UsageError, match="lacks train-images-idx3-ubyte"):
        data.build_splits("mnist", tmp_path / "empty", val_size=5, seed=0)


def test_save_load_round_trip_with_normalisation(raw_mnist: Path, tmp_path: Path) -> None:
    splits = data.build_splits("mnist", raw_mnist, val_size=50, seed=3)
    splits["train_x"][0, 0, 5, :3] = torch.tensor([0, 255, 51], dtype=torch.uint8)
    path = tmp_path / "out" / "splits.safetensors"
    checksums = data.raw_checksums("mnist", raw_mnist)
    data.save_splits(splits, path, dataset="mnist", seed=3, val_size=50, raw_sha256=checksums)
    assert [p.name for p in path.parent.iterdir()] == ["splits.safetensors"]
    loaded = data.load_splits(path)
    assert set(loaded) == {"train", "val"}  # test only when asked
    x, y = loaded["train"]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    expected = [(0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081, (0.2 - 0.1307) / 0.3081]
    assert x[0, 0, 5, :3].tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(x, (splits["train_x"].float() / 255 - 0.1307) / 0.3081, atol=1e-6)
    assert torch.equal(y, splits["train_y"])
    assert torch.equal(loaded["val"][1], splits["val_y"])
    test = data.load_splits(path, names=("test",))
    assert set(test) == {"test"} and torch.equal(test["test"][1], splits["test_y"])
    info = data.dataset_info(path)
    assert info["dataset"] == "mnist" and info["num_classes"] == 10 and info["shape"] == (1, 28, 28)
    assert info["seed"] == 3 and info["val_size"] == 50 and info["limit"] is None
    assert info["raw_sha256"] == {n: sha256(c) for n, c in FAKE.items()}
    assert info["sizes"] == {"train": N_TRAIN - 50, "val": 50, "test": N_TEST}


def test_cifar_normalisation(tmp_path: Path) -> None:
    splits = data.synthetic_splits(n_train=8, n_val=4, n_test=4, shape=(3, 32, 32), num_classes=10)
    path = tmp_path / "cifar.safetensors"
    data.save_splits(splits, path, dataset="cifar10", seed=0)
    x = data.load_splits(path, names=("test",))["test"][0]
    spec = data.DATASETS["cifar10"]
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    assert torch.allclose(x, (splits["test_x"].float() / 255 - mean) / std, atol=1e-6)


def test_synthetic_splits_save_and_learnable(tmp_path: Path) -> None:
    splits = data.synthetic_splits(shape=(3, 4, 4), num_classes=5, seed=7)
    assert torch.equal(
        splits["train_x"], data.synthetic_splits(shape=(3, 4, 4), num_classes=5, seed=7)["train_x"]
    )
    assert splits["train_x"].dtype == torch.uint8 and splits["val_y"].dtype == torch.int64
    assert [len(splits[f"{s}_y"]) for s in data.SPLIT_NAMES] == [256, 64, 64]
    path = tmp_path / "synthetic.safetensors"
    data.save_splits(splits, path, dataset=data.SYNTHETIC, seed=7)
    info = data.dataset_info(path)
    assert (info["dataset"], info["num_classes"], info["shape"]) == ("synthetic", 5, (3, 4, 4))
    assert info["mean"] == (0.5, 0.5, 0.5) and info["std"] == (0.25, 0.25, 0.25)
    loaded = data.load_splits(path, names=("train", "val", "test"))
    x, y = loaded["train"]
    assert torch.allclose(x, (splits["train_x"].float() / 255 - 0.5) / 0.25, atol=1e-6)
    # Learnable: nearest class mean of the training set classifies the validation set.
    means = torch.stack([x[y == c].mean(0) for c in range(5)]).flatten(1)
    vx, vy = loaded["val"]
    predicted = torch.cdist(vx.flatten(1), means).argmin(1)
    assert (predicted == vy).float().mean() > 0.95


def test_load_splits_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        data.load_splits(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(UsageError, match=r"junk\.safetensors"):
        data.load_splits(tmp_path / "junk.safetensors")
    path = tmp_path / "s.safetensors"
    data.save_splits(
        data.synthetic_splits(n_train=8, n_val=4, n_test=4), path, dataset="synthetic", seed=0
    )
    with pytest.raises(UsageError, match=r"^splits: unknown name 'dev'; allowed: test, train, val"):
        data.load_splits(path, names=("dev",))
    with pytest.raises(UsageError, match=r"data\.dataset: unknown name 'imagenet'"):
        data.save_splits(data.synthetic_splits(), path, dataset="imagenet", seed=0)


def test_batches_cover_each_sample_once_and_are_deterministic() -> None:
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)
    batches = data.Batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 3
    epochs = [[(xb.clone(), yb.clone()) for xb, yb in batches] for _ in range(2)]
    for epoch in epochs:
        assert [len(yb) for _, yb in epoch] == [4, 4, 2]
        seen = torch.cat([yb for _, yb in epoch])
        assert sorted(seen.tolist()) == list(range(10))
        assert all(torch.equal(xb.squeeze(1).long(), yb) for xb, yb in epoch)
    order = [torch.cat([yb for _, yb in e]).tolist() for e in epochs]
    assert order[0] != order[1]  # a new order each epoch
    again = data.Batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert [torch.cat([yb for _, yb in again]).tolist() for _ in range(2)] == order


def test_batches_drop_last_and_no_shuffle() -> None:
    x, y = torch.arange(10).unsqueeze(1), torch.arange(10)
    dropped = data.Batches(
        x, y, 4, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(1)
    )
    assert len(dropped) == 2 and [len(yb) for _, yb in dropped] == [4, 4]
    plain = list(data.Batches(x, y, 4, shuffle=False))
    assert [yb.tolist() for _, yb in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert plain[0][0].data_ptr() == x.data_ptr()  # views, no copies
    assert len(data.Batches(x[:0], y[:0], 4, shuffle=True)) == 0
    with pytest.raises(UsageError, match="batch_size: 0"):
        data.Batches(x, y, 0, shuffle=False)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 50),
    batch_size=st.integers(1, 20),
    drop_last=st.booleans(),
    seed=st.integers(0, 9),
)
def test_batches_property(n: int, batch_size: int, drop_last: bool, seed: int) -> None:
    y = torch.arange(n)
    batches = data.Batches(
        y.unsqueeze(1),
        y,
        batch_size,
        shuffle=True,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )
    sizes = [len(yb) for _, yb in batches]
    seen = torch.cat([yb for _, yb in batches]).tolist() if sizes else []
    assert len(sizes) == len(batches)
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(n))
    assert len(seen) == (n // batch_size * batch_size if drop_last else n)
