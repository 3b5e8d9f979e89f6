"""Fake raw files for the tests of sparsebench.data, and helpers to make them pass as real.

Not a conftest.py (a second one would shadow ``tests/conftest.py`` for ``from conftest import``)
and no ``__init__.py``: the test modules next to it import it as ``fakes``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsebench.data import registry
from sparsebench.util.errors import UsageError

N_TRAIN, N_TEST = 300, 40


def idx_images(n: int, offset: int = 0, h: int = 28, w: int = 28) -> bytes:
    """An idx3 file whose image i carries its index (offset + i) in its first two pixels."""
    rng = np.random.default_rng(offset)
    pixels = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    index = np.arange(offset, offset + n)
    pixels[:, 0, 0], pixels[:, 0, 1] = index // 256, index % 256
    return struct.pack(">HBB3I", 0, 8, 3, n, h, w) + pixels.tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">HBBI", 0, 8, 1, len(labels)) + labels.astype(np.uint8).tobytes()


def image_index(x: torch.Tensor) -> torch.Tensor:
    """Recover the indices written by `idx_images`."""
    return x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()


def _fake_mnist() -> dict[str, bytes]:
    labels = np.arange(N_TRAIN + N_TEST) % 10
    return {
        "train-images-idx3-ubyte": idx_images(N_TRAIN),
        "train-labels-idx1-ubyte": idx_labels(labels[:N_TRAIN]),
        "t10k-images-idx3-ubyte": idx_images(N_TEST, offset=N_TRAIN),
        "t10k-labels-idx1-ubyte": idx_labels(labels[N_TRAIN:]),
    }


FAKE = _fake_mnist()


def write_files(directory: Path, files: dict[str, bytes], gz: bool | str = False) -> Path:
    """Write files plain, gzipped (``gz=True``) or alternating (``gz="mixed"``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, (name, content) in enumerate(files.items()):
        zipped = gz is True or (gz == "mixed" and i % 2 == 0)
        path = directory / (f"{name}.gz" if zipped else name)
        path.write_bytes(gzip.compress(content) if zipped else content)
    return directory


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def md5s(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def one_line(exc: pytest.ExceptionInfo[UsageError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def set_checksums(
    monkeypatch: pytest.MonkeyPatch, dataset: str, checksums: dict[str, str], layout: int = 0
) -> None:
    """Make one layout of a registry entry expect `checksums`."""
    spec = registry.DATASETS[dataset]
    layouts = list(spec.layouts)
    layouts[layout] = dataclasses.replace(layouts[layout], checksums=checksums)
    monkeypatch.setitem(
        registry.DATASETS, dataset, dataclasses.replace(spec, layouts=tuple(layouts))
    )


def accept_fake_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make mnist and fashion_mnist expect the hashes of `FAKE`."""
    for dataset in ("mnist", "fashion_mnist"):
        set_checksums(monkeypatch, dataset, {name: sha256(c) for name, c in FAKE.items()})


def write_cifar_python(root: Path, per_batch: int = 20) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py/`` with tiny pickled batches and ``batches.meta``."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in registry.CIFAR_TRAIN + registry.CIFAR_TEST:
        arrays[name] = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        entry = {"batch_label": name, "labels": labels, "data": arrays[name]}
        (directory / name).write_bytes(pickle.dumps(entry, protocol=2))
    (directory / "batches.meta").write_bytes(pickle.dumps({"label_names": ["cat"] * 10}))
    return arrays


def accept_cifar_python(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Make our md5 list and torchvision's expect the fake python batches in `directory`."""
    from torchvision.datasets import CIFAR10

    digests = md5s(directory)
    set_checksums(monkeypatch, "cifar10", digests)
    monkeypatch.setattr(CIFAR10, "train_list", [[n, digests[n]] for n in registry.CIFAR_TRAIN])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, digests[n]] for n in registry.CIFAR_TEST])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": digests["batches.meta"]})


def write_cifar_binary(root: Path, per_batch: int = 20) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-bin/*.bin``: records of 1 label byte and 3072 pixel bytes."""
    directory = root / "cifar-10-batches-bin"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    records = {}
    for name in registry.CIFAR_BINARY.files:
        records[name] = rng.integers(0, 256, size=(per_batch, 3073), dtype=np.uint8)
        records[name][:, 0] %= 10
        (directory / name).write_bytes(records[name].tobytes())
    return records
