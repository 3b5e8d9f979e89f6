"""Every safetensors file the project writes is the same bytes for the same content, so that DVC
sees an unchanged output as unchanged (safetensors alone orders its metadata at random)."""

from __future__ import annotations

import hashlib

import torch
from safetensors import safe_open

from sparsebench import checkpoint
from sparsebench.core.models import build_model
from sparsebench.core.sparsity import apply_masks, magnitude_masks, make_permanent, save_masks
from sparsebench.data.splits import save_splits, synthetic_splits
from sparsebench.util.canonical import safetensors_bytes

METADATA = {k: str(i) for i, k in enumerate(
    ["format", "arch", "meta", "shapes", "seed", "mean", "std"])}


def _digests(write, path, times: int = 5) -> set[str]:
    digests = set()
    for _ in range(times):
        write(path)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    return digests


def test_the_same_tensors_and_metadata_give_the_same_bytes_and_read_back(tmp_path):
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor([1, 2], dtype=torch.int8)}
    blobs = {safetensors_bytes(tensors, METADATA) for _ in range(10)}
    assert len(blobs) == 1
    path = tmp_path / "t.safetensors"
    path.write_bytes(blobs.pop())
    assert int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == METADATA
        assert sorted(f.keys()) == ["a", "b"]
        for name, tensor in tensors.items():
            assert torch.equal(f.get_tensor(name), tensor)


def test_models_masks_checkpoints_and_splits_are_written_byte_for_byte_the_same(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", widths=[20, 10], in_channels=1, image_size=4, num_classes=3)
    masks = magnitude_masks(model, 0.8)
    splits = synthetic_splits(n_train=32, n_val=8, n_test=8, shape=(1, 4, 4), num_classes=3)
    assert len(_digests(lambda p: save_masks(masks, p), tmp_path / "masks.safetensors")) == 1
    assert len(_digests(lambda p: checkpoint.save_model(model, p, {"seed": 0, "epoch": 3}),
                        tmp_path / "model.safetensors")) == 1
    assert len(_digests(lambda p: save_splits(splits, p, dataset="synthetic", seed=0),
                        tmp_path / "splits.safetensors")) == 1
    apply_masks(model, masks)
    make_permanent(model)
    assert len(_digests(lambda p: checkpoint.save(model, p),
                        tmp_path / "model.sparse.safetensors")) == 1
    loaded = checkpoint.load(tmp_path / "model.sparse.safetensors")
    want, got = model.state_dict(), loaded.state_dict()
    assert sorted(want) == sorted(got)
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), name
