"""Tests of sparsebench.data.registry: entries, names and the copied CIFAR-10 checksums."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsebench import data
from sparsebench.data import registry
from sparsebench.util.errors import UsageError


def test_registry_and_unknown_name() -> None:
    assert set(data.DATASETS) == {"mnist", "fashion_mnist", "cifar10"}
    assert data.get_spec("cifar10").shape == (3, 32, 32)
    assert data.get_spec("fashion_mnist").mean == (0.2860,)
    assert [layout.fmt for layout in data.get_spec("cifar10").layouts] == [
        "cifar-python",
        "cifar-binary",
    ]
    with pytest.raises(
        UsageError, match=r"^data\.dataset: unknown name 'imagenet'; allowed: cifar10"
    ):
        data.get_spec("imagenet")
    with pytest.raises(UsageError, match=r"^data\.dataset: "):
        data.fetch_raw("imagenet", Path("unused"))


def test_cifar_checksums_match_torchvision() -> None:
    cifar = pytest.importorskip("torchvision.datasets.cifar")
    expected = dict(cifar.CIFAR10.train_list + cifar.CIFAR10.test_list)
    expected[cifar.CIFAR10.meta["filename"]] = cifar.CIFAR10.meta["md5"]
    assert dict(registry.CIFAR_PYTHON.checksums) == expected
    assert registry.CIFAR_PYTHON.subdir == cifar.CIFAR10.base_folder
