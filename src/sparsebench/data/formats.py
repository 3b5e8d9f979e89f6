"""Parsing raw files into uint8 (N, C, H, W) images and int64 (N,) labels.

MNIST-family files are idx files, parsed here. CIFAR-10 comes in two official forms:

* python batches (``cifar-10-batches-py/``) are pickles. They are read through torchvision,
  which checks every batch and ``batches.meta`` against its own md5 list before unpickling any
  of them and refuses a mismatch, so no unverified pickle is ever loaded. sparsebench itself
  never unpickles.
* binary batches (``cifar-10-batches-bin/*.bin``: records of 1 label byte and 3072 pixel
  bytes, 10,000 records a file) are parsed with numpy.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from sparsebench.data.files import BadFile, one_line, read_bytes
from sparsebench.data.registry import DatasetSpec, Layout
from sparsebench.util.errors import UsageError

CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
#: Records in one official CIFAR-10 binary batch, which is thus 30,730,000 bytes long.
CIFAR_BIN_RECORDS = 10_000

Tensors = tuple[torch.Tensor, torch.Tensor]


def _bad_raw(path: Path, reason: str) -> UsageError:
    return UsageError(
        f"raw data: '{path}' does not fit its data set ({reason}); allowed: the original file"
    )


def _bad_idx(path: Path, reason: str) -> UsageError:
    return UsageError(
        f"raw data: '{path}' is not a valid idx file ({reason}); allowed: an idx1 (labels) or "
        "idx3 (images) unsigned-byte file as published with MNIST, plain or gzipped"
    )


def read_idx(path: Path) -> torch.Tensor:
    """Parse an idx file (plain or gzipped) of unsigned bytes.

    Args:
        path: An idx3 image file (magic 0x00000803) or idx1 label file (magic 0x00000801).

    Returns:
        Images as uint8 (N, 1, H, W), or labels as int64 (N,).

    Raises:
        UsageError: When the file is unreadable or malformed; the message names it.
    """
    path = Path(path)
    try:
        data = read_bytes(path)
    except BadFile as exc:
        raise _bad_idx(path, str(exc)) from None
    if len(data) < 4:
        raise _bad_idx(path, f"only {len(data)} bytes")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise _bad_idx(
            path, f"magic number 0x{data[:4].hex()} is neither 0x00000801 nor 0x00000803"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _bad_idx(path, "truncated header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise _bad_idx(path, f"{len(data)} bytes, but its header {list(dims)} needs {expected}")
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    if ndim == 1:
        return torch.from_numpy(array.astype(np.int64))
    n, height, width = dims
    return torch.from_numpy(array.reshape(n, 1, height, width).copy())


def check_cifar_binary(path: Path, data: bytes) -> None:
    """Check the structure of an official CIFAR-10 binary batch: its exact size, labels 0..9.

    This stands in for a checksum: the authors publish the md5 of cifar-10-binary.tar.gz only,
    not of its members. It catches truncated, padded and foreign files, not altered pixels;
    nothing in this format can run code.

    Raises:
        BadFile: Naming `path` and what is wrong.
    """
    size = CIFAR_BIN_RECORDS * CIFAR_RECORD_BYTES
    if len(data) != size:
        raise BadFile(f"{path} has {len(data)} bytes, not the {size} of a CIFAR-10 binary batch")
    if np.frombuffer(data, np.uint8)[::CIFAR_RECORD_BYTES].max() > 9:
        raise BadFile(f"{path} has labels outside 0..9, unlike a CIFAR-10 binary batch")


def read_cifar_binary(path: Path) -> Tensors:
    """Read one CIFAR-10 binary batch (any number of records)."""
    try:
        data = read_bytes(path)
    except BadFile as exc:
        raise _bad_raw(path, str(exc)) from None
    if len(data) % CIFAR_RECORD_BYTES:
        raise _bad_raw(path, f"{len(data)} bytes, not a multiple of {CIFAR_RECORD_BYTES}")
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    x = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(records[:, 0].astype(np.int64))


def read_cifar_python(raw_dir: Path, train: bool) -> Tensors:
    """Read the official training or test set from CIFAR-10 python batches, via torchvision.

    torchvision wants ``root/cifar-10-batches-py/``: `root` is a temporary directory in which
    that name links to `raw_dir`.
    """
    from torchvision.datasets import CIFAR10  # lazy: importing torchvision takes seconds

    with tempfile.TemporaryDirectory(prefix="sparsebench-cifar-") as root:
        os.symlink(Path(raw_dir).resolve(), Path(root, CIFAR10.base_folder))
        try:
            dataset = CIFAR10(root, train=train, download=False)
            x = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # from HWC
            y = torch.as_tensor(dataset.targets, dtype=torch.int64)
        except Exception as exc:  # torchvision's errors have no common type
            raise UsageError(
                f"raw data: '{raw_dir}' does not hold the official CIFAR-10 python batches "
                f"(torchvision: {one_line(exc, 120)}); allowed: the files of "
                "cifar-10-python.tar.gz, as fetch_raw('cifar10', ...) writes them"
            ) from None
    return x, y


def raw_layout(spec: DatasetSpec, raw_dir: Path) -> Layout:
    """The layout of `spec` whose files are all in `raw_dir`, as `fetch_raw` writes them.

    Raises:
        UsageError: When no layout is complete; the message names the missing files.
    """
    missing = []
    for layout in spec.layouts:
        missing.append([name for name in layout.files if not (raw_dir / name).is_file()])
        if not missing[-1]:
            return layout
    raise UsageError(
        f"raw data: '{raw_dir}' lacks {', '.join(min(missing, key=len))}; allowed: a directory "
        f"filled by fetch_raw('{spec.name}', ...) (run the data preparation stage first)"
    )


def _read_set(layout: Layout, raw_dir: Path, train: bool) -> Tensors:
    """The official training (`train`) or test set, unchecked."""
    paths = [raw_dir / name for name in (layout.train_files if train else layout.test_files)]
    if layout.fmt == "idx":
        x, y = read_idx(paths[0]), read_idx(paths[1])
        if x.dim() != 4 or y.dim() != 1:
            raise _bad_raw(paths[0], "images and labels files are swapped")
        return x, y
    if layout.fmt == "cifar-binary":
        batches = [read_cifar_binary(path) for path in paths]
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    return read_cifar_python(raw_dir, train)


def load_raw(spec: DatasetSpec, raw_dir: Path) -> tuple[Tensors, Tensors]:
    """The official ((train_x, train_y), (test_x, test_y)) from the raw files in `raw_dir`.

    Raises:
        UsageError: For missing files, or files that do not fit `spec` (shape, labels).
    """
    layout = raw_layout(spec, raw_dir)
    train, test = _read_set(layout, raw_dir, True), _read_set(layout, raw_dir, False)
    for (x, y), files in ((train, layout.train_files), (test, layout.test_files)):
        where = raw_dir / files[0]
        if tuple(x.shape[1:]) != spec.shape:
            raise _bad_raw(where, f"images of shape {tuple(x.shape[1:])}, not {spec.shape}")
        if len(x) != len(y):
            raise _bad_raw(where, f"{len(x)} images but {len(y)} labels")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise _bad_raw(where, f"labels outside [0, {spec.num_classes})")
    return train, test
