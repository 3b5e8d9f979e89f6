"""Tests of sparsebench.data.formats: idx parsing and both CIFAR-10 forms, without pickle."""

from __future__ import annotations

import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import (
    accept_cifar_python,
    idx_images,
    idx_labels,
    image_index,
    one_line,
    write_cifar_binary,
    write_cifar_python,
    write_files,
)

from sparsebench import data
from sparsebench.data import formats
from sparsebench.data.files import BadFile
from sparsebench.util.errors import UsageError

SPEC = data.DATASETS["cifar10"]


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_files(tmp_path, {"img": idx_images(5, h=4, w=3), "lab": idx_labels(labels)}, gz=gz)
    suffix = ".gz" if gz else ""
    images = data.read_idx(tmp_path / f"img{suffix}")
    assert images.dtype == torch.uint8 and images.shape == (5, 1, 4, 3)
    assert image_index(images).tolist() == [0, 1, 2, 3, 4]
    raw = np.frombuffer(idx_images(5, h=4, w=3)[16:], np.uint8).reshape(5, 1, 4, 3)
    assert torch.equal(images, torch.from_numpy(raw.copy()))
    parsed = data.read_idx(tmp_path / f"lab{suffix}")
    assert parsed.dtype == torch.int64 and parsed.tolist() == labels.tolist()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "only 0 bytes"),
        (struct.pack(">HBBI", 0, 9, 1, 2) + b"\x00\x00", "magic number 0x00000901"),
        (struct.pack(">HBBI", 0, 8, 1, 3) + b"\x00\x00", "needs 11"),
        (struct.pack(">HBB", 0, 8, 3) + b"\x00\x00", "truncated header"),
        (b"\x1f\x8b garbage", "cannot read"),
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "broken-idx"
    path.write_bytes(content)
    with pytest.raises(UsageError) as exc:
        data.read_idx(path)
    assert str(path) in one_line(exc) and reason in str(exc.value)


def test_cifar_python_read_through_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = write_cifar_python(tmp_path)
    raw = tmp_path / "cifar-10-batches-py"
    accept_cifar_python(monkeypatch, raw)
    (train_x, train_y), (test_x, test_y) = formats.load_raw(SPEC, raw)
    assert train_x.shape == (100, 3, 32, 32) and train_y.dtype == torch.int64
    assert torch.equal(test_x, torch.from_numpy(arrays["test_batch"].reshape(20, 3, 32, 32)))
    assert test_x.is_contiguous() and len(test_y) == 20
    assert len(list(raw.iterdir())) == 7  # the temporary link to raw_dir left it intact


def test_cifar_python_unverified_pickle_is_never_loaded(tmp_path: Path) -> None:
    write_cifar_python(tmp_path)
    raw = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[Path]]:
            return (Path.touch, (marker,))

    (raw / "data_batch_3").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(UsageError) as exc:  # torchvision's md5 list refuses the fake files
        formats.load_raw(SPEC, raw)
    assert one_line(exc).startswith(
        f"raw data: '{raw}' does not hold the official CIFAR-10 python batches (torchvision: "
    )
    assert not marker.exists()


def test_cifar_binary_read_without_pickle(tmp_path: Path) -> None:
    records = write_cifar_binary(tmp_path, per_batch=7)
    raw = tmp_path / "cifar-10-batches-bin"
    (train_x, train_y), (test_x, test_y) = formats.load_raw(SPEC, raw)
    assert train_x.shape == (35, 3, 32, 32) and train_x.dtype == torch.uint8
    first = records["data_batch_1.bin"]
    assert torch.equal(train_x[:7], torch.from_numpy(first[:, 1:].reshape(7, 3, 32, 32)))
    assert train_y[:7].tolist() == first[:, 0].tolist() and train_y.dtype == torch.int64
    assert test_x.shape == (7, 3, 32, 32)
    assert test_y.tolist() == records["test_batch.bin"][:, 0].tolist()


def test_cifar_binary_malformed(tmp_path: Path) -> None:
    records = write_cifar_binary(tmp_path)
    raw = tmp_path / "cifar-10-batches-bin"
    (raw / "test_batch.bin").write_bytes(records["test_batch.bin"].tobytes()[:-1])
    with pytest.raises(UsageError, match=r"test_batch\.bin' does not fit .*not a multiple of 3073"):
        formats.load_raw(SPEC, raw)
    bad = records["test_batch.bin"].copy()
    bad[3, 0] = 10
    (raw / "test_batch.bin").write_bytes(bad.tobytes())
    with pytest.raises(UsageError, match=r"test_batch\.bin' .*labels outside \[0, 10\)"):
        formats.load_raw(SPEC, raw)


def test_check_cifar_binary_is_structural(tmp_path: Path) -> None:
    assert formats.CIFAR_BIN_RECORDS * formats.CIFAR_RECORD_BYTES == 30_730_000
    records = np.zeros((formats.CIFAR_BIN_RECORDS, 3073), np.uint8)
    records[:, 0] = np.arange(len(records)) % 10
    formats.check_cifar_binary(tmp_path, records.tobytes())
    with pytest.raises(BadFile, match="has 30729999 bytes, not the 30730000"):
        formats.check_cifar_binary(tmp_path, records.tobytes()[:-1])
    records[-1, 0] = 255
    with pytest.raises(BadFile, match=r"labels outside 0\.\.9"):
        formats.check_cifar_binary(tmp_path, records.tobytes())


def test_missing_layout_names_missing_files(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path)
    raw = tmp_path / "cifar-10-batches-bin"
    shutil.move(raw / "test_batch.bin", tmp_path / "elsewhere")
    with pytest.raises(UsageError, match=r"lacks test_batch\.bin; allowed: a directory filled"):
        formats.load_raw(SPEC, raw)


def test_no_pickle_in_the_data_package() -> None:
    for path in Path(formats.__file__).parent.glob("*.py"):
        lines = path.read_text().splitlines()
        assert not [ln for ln in lines if ln.lstrip().startswith(("import pickle", "from pickle"))]
