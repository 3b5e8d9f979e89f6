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
    """The repository root: ``$SPARSEBENCH_ROOT``, else the nearest folder holding ``.dvc``
    above the workspace (a suite under ``pipelines/`` shares the root's stores), outside any
    DVC temp copy; the workspace itself when there is none."""
    if os.environ.get("SPARSEBENCH_ROOT"):
        return Path(os.environ["SPARSEBENCH_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            here = Path(*parts[:i])
            break
    return next((p for p in (here, *here.parents) if (p / ".dvc").is_dir()), here)


def run_dir(*parts: str | int) -> Path:
    """``runs/<parts...>`` in the workspace."""
    return Path("runs", *map(str, parts))


def seed_dir(base: Path, seed: int) -> Path:
    return base / f"seed{seed}"


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Build a directory beside ``target`` and swap it in only when the block succeeds.

    A stage that fails leaves its previous outputs as they were.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file that appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
