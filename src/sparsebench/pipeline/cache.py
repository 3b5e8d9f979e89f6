"""What a finished run or stage is cached by, and how a killed stage resumes.

* `fingerprint`: SHA-256 over a stage, its validated config, its input files and the code of
  the result layers (`code_digest`). Which code counts is decided by the package's folders
  (`RESULT_CODE`), not by a list of file names: a new module under ``pipeline/`` keeps every
  cached run, one under ``core/`` does not.
* `run_fingerprint`, `shared_fingerprint`: the keys of a run's directory and of a prune
  trajectory shared by the levels.
* `StageWork`: a stage builds its outputs in a work directory beside the target, tagged with
  its fingerprint; finished seeds are moved in whole, a killed stage keeps them for its next
  start, and on success the work directory replaces the target in one rename.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sparsebench.core import distributed
from sparsebench.core.checkpoints import RESUME_SUFFIX, EpochCheckpoint
from sparsebench.suite.params import Params
from sparsebench.suite.plan import Planned, input_files
from sparsebench.util.paths import atomic_dir, swap_in

FINGERPRINT = "FINGERPRINT"


def fingerprint(*, stage: str, config: Any, inputs: Iterable[Path] = ()) -> str:
    """SHA-256 over the stage, its validated config (JSON), its input files and the code."""
    digest = hashlib.sha256()
    digest.update(stage.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for path in sorted(Path(p) for p in inputs):
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                digest.update(str(file).encode())
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    digest.update(code_digest().encode())
    return digest.hexdigest()


_CODE_DIGEST: str | None = None

#: the result layers: the packages (and modules) whose code can change a run's numbers or files
#: given its resolved spec. Their code keys every cached run (`code_digest`).
RESULT_CODE = ("core", "data", "optim", "methods", "checkpoint", "util", "run.py")
#: the layers that plan, orchestrate, track or report runs: a change there keeps every cached
#: run (DVC still reruns the stages that list them, and those find every run cached). The spec
#: a suite resolves for a run is keyed whole (`run_fingerprint`), so the suite layer is here too.
NOT_RESULT_CODE = ("suite", "pipeline", "tracking", "report", "tuning", "__init__.py",
                   "__main__.py", "mlflow_model.py")


def package_root() -> Path:
    return Path(__file__).parent.parent


def layer_of(name: str) -> str:
    """The top-level package or module of ``name``, a path relative to the package root."""
    return name.split("/", 1)[0]


def code_digest() -> str:
    """SHA-256 of the sources of the result layers (`RESULT_CODE`): a resume or a cached run
    never mixes two versions of them. Each file counts as its syntax tree without docstrings
    (`code_of`), so an edit of a docstring, a comment or the layout keeps every cached run."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        _CODE_DIGEST = digest_of(package_root())
    return _CODE_DIGEST


def digest_of(root: Path) -> str:
    """`code_digest` of the package whose sources lie under ``root``."""
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        name = file.relative_to(root).as_posix()
        if layer_of(name) in RESULT_CODE:
            digest.update(name.encode())
            digest.update(code_of(file.read_bytes()))
    return digest.hexdigest()


def code_of(source: bytes) -> bytes:
    """What of a Python source can change what it computes: ``ast.dump`` of its tree (no
    comments, no positions, no layout) with the docstring of every module, class and function
    left out."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


class StageWork:
    """A stage's resumable work directory beside its target; see the module docstring.

    Use as a context manager: on success the work directory replaces ``target``; on an error
    it stays (with what was finished) for the next start, and ``target`` is untouched.
    """

    def __init__(self, target: Path, fingerprint: str):
        self.target = Path(target)
        self.dir = self.target.with_name(f".{self.target.name}.work")
        self.fingerprint = fingerprint

    def __enter__(self) -> StageWork:
        distributed.rank0_first(self._prepare)  # under torchrun: rank 0 writes, all read
        return self

    def _prepare(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        marker = self.dir / FINGERPRINT
        if self.dir.exists() and not (marker.exists() and marker.read_text() == self.fingerprint):
            shutil.rmtree(self.dir)  # another config, code or input: start over
        if not self.dir.exists():
            with atomic_dir(self.dir) as tmp:
                (tmp / FINGERPRINT).write_text(self.fingerprint)
        for stale in self.dir.glob(".*.tmp*"):  # a seed being moved in when the kill came
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()

    def __exit__(self, kind, value, tb) -> None:
        if not distributed.writer():
            if kind is None:
                distributed.rank0_first(lambda: None)  # wait for rank 0's swap
            return
        if kind is not None:  # the target is untouched; keep what can be resumed, if anything
            resumable = [p for p in self.dir.iterdir() if p.name != FINGERPRINT]
            if not resumable:
                shutil.rmtree(self.dir, ignore_errors=True)
            return
        distributed.rank0_first(self._swap)

    def _swap(self) -> None:  # the target keeps its FINGERPRINT: `finished` reads it
        for leftover in self.dir.glob(f"*{RESUME_SUFFIX}"):
            leftover.unlink()
        swap_in(self.dir, self.target)

    def finished(self, names: list[str]) -> bool:
        """Whether the target holds every part of ``names``, made with this fingerprint."""
        try:
            same = (self.target / FINGERPRINT).read_text() == self.fingerprint
        except OSError:
            return False
        return same and all((self.target / n).is_dir() for n in names)

    def done(self, name: str) -> bool:
        """Whether the part ``name`` (a seed directory) was finished by an earlier start."""
        return (self.dir / name).is_dir()

    def checkpoint(self, name: str) -> EpochCheckpoint:
        return EpochCheckpoint(self.dir / f"{name}{RESUME_SUFFIX}")

    def finish(self, name: str, write: Callable[..., None], *args: Any) -> Path:
        """Run ``write(path, *args)`` into a fresh empty directory, then move it in whole as
        ``name`` (`paths.atomic_dir`)."""
        with atomic_dir(self.dir / name) as tmp:
            write(tmp, *args)
        (self.dir / f"{name}{RESUME_SUFFIX}").unlink(missing_ok=True)
        return self.dir / name


def run_fingerprint(params: Params, planned: Planned) -> str:
    """What a run's cached directory is keyed by: its resolved spec, the shared sections it
    reads (device, data, evaluate), its thread count, its input files and the code that can
    change it (`code_digest`). The method's own ``levels`` only choose which of the
    suite's levels it runs, so they are keyed as unset: narrowing them keeps the other
    levels' runs (a progressive step whose previous step changes has another input file)."""
    run = planned.spec.config()
    if "levels" in run["method"]:
        run["method"]["levels"] = None  # as every run was keyed before a subset was given
    config = {"run": run, **numerics_config(params),
              "evaluate": params.evaluate.model_dump(mode="json"), "budget": planned.budget}
    return fingerprint(stage="run", config=config,
                       inputs=input_files(planned.spec))


#: what a run's method parameters hold about its level alone (and its retrain)
LEVEL_KEYS = ("target_sparsity", "layer_sparsity", "scope", "levels", "retrain")


def shared_fingerprint(params: Params, planned: Planned) -> str:
    """What a shared prune trajectory is keyed by: the run's spec without what only its level
    and retrain read, the data, device and threads, the inputs and the code."""
    run = planned.spec.config()
    run["method"] = {k: v for k, v in run["method"].items() if k not in LEVEL_KEYS}
    for key in ("level", "point", "retrain"):
        run.pop(key)
    return fingerprint(stage="shared_prune", config={"run": run, **numerics_config(params)},
                       inputs=input_files(planned.spec))


def numerics_config(params: Params) -> dict[str, Any]:
    """The settings a run's numbers depend on beside its spec."""
    deterministic = {"deterministic": True} if params.execution.deterministic else {}
    return {"device": params.device, "data": params.data.model_dump(mode="json"),
            "threads": params.execution.threads, **deterministic, **arithmetic(params)}


def arithmetic(params: Params) -> dict[str, Any]:
    """What changes the arithmetic of any training: torchrun's ranks (another reduction
    order) and bf16 and the other options; nothing in the default single process."""
    config: dict[str, Any] = {}
    if distributed.world() > 1:
        config["world_size"] = distributed.world()
    if not params.execution.options().default:
        config["options"] = params.execution.model_dump(
            include={"precision", "channels_last", "compile"})
    return config
