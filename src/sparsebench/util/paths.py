"""Where things live: stage outputs relative to the workspace, shared stores at the repo root.

Stage outputs (``runs/``, ``reports/``, ``data/prepared/``) are relative to the working
directory, which is the DVC workspace. The MLflow store and the raw-data cache are shared by
every workspace and resolve against the repository root: ``dvc exp run --queue`` runs a stage in
a temporary copy under ``.dvc/tmp/exps/``, and its runs must land in the same store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def repo_root(start: Path | None = None) -> Path:
    """The repository root: ``$SPARSEBENCH_ROOT``, else the outermost folder holding ``.dvc``
    at or above the workspace (a suite under ``pipelines/``, a DVC project of its own, shares
    the root's stores), outside any DVC temp copy; the workspace itself when there is none."""
    if os.environ.get("SPARSEBENCH_ROOT"):
        return Path(os.environ["SPARSEBENCH_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            here = Path(*parts[:i])
            break
    return next((p for p in (*reversed(here.parents), here) if (p / ".dvc").is_dir()), here)


def run_dir(*parts: str | int) -> Path:
    """``runs/<parts...>`` in the workspace."""
    return Path("runs", *map(str, parts))


def seed_dir(base: Path, seed: int) -> Path:
    return base / f"seed{seed}"


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Build a directory beside ``target`` and swap it in only when the block succeeds.

    A stage that fails leaves its previous outputs as they were, and no partial directory.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, target)


def swap_in(source: Path, target: Path) -> None:
    """Replace the directory ``target`` by ``source``: the old one moves aside first and is
    deleted only once the new one is in place (`recover` undoes a kill in between)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover(target: Path) -> None:
    """Put back the previous outputs of ``target`` if a kill came between the two renames of
    `swap_in`, and delete the temp directories of `atomic_dir` that a kill left behind."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_copy(path: Path, data: bytes | str, durable: bool = True) -> Path:
    """``data`` (str as UTF-8) in a new file beside ``path``, flushed to disk (unless not
    ``durable``), mode 0644; nothing is left behind when that fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def atomic_write_many(files: dict[Path, bytes | str], durable: bool = True) -> None:
    """Write each file beside its target, flushed to disk (unless not ``durable``: see
    `atomic_write`), then rename them in (str as UTF-8).

    What it guarantees: each target holds, at any moment, its old content or its new one,
    whole. Every file is written before the first rename, so an error while writing (a full
    disk, a read-only directory) changes no target and leaves no temporary file. It is not
    all or nothing across files: a crash between two renames leaves some targets new and the
    others old (outputs that must change together belong in one directory: `atomic_dir`).
    """
    renames: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            renames.append((_temporary_copy(Path(path), data, durable), Path(path)))
        for tmp, path in renames:
            os.replace(tmp, path)
    finally:
        for tmp, _ in renames:  # only those not renamed in still exist
            tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | str, durable: bool = True) -> None:
    """Write one file that appears whole or not at all (`atomic_write_many` of one file).

    ``durable=False`` skips the flush to disk: the file is still whole or absent after the
    process is killed (the kernel holds it), but not after a power cut or a kernel crash, when
    it may be empty. For files worth losing then, written often (resume checkpoints)."""
    atomic_write_many({Path(path): data}, durable)
