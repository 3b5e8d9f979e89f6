"""``tuned/<key>.yaml``: the parameters a study chose for ``methods.<key>``, laid over params.yaml.

`sparsebench tune --method KEY` writes the file (its ``params`` plus where they came from);
every stage that reads params.yaml lays ``params`` over ``methods.<key>`` when the file exists,
so ``dvc repro`` runs the benchmark with tuned parameters. Delete the file to go back to the
hand-set values. The folder lives in the workspace (beside ``runs/``), so each suite has its own,
and is a dependency of every method's stages in dvc.yaml. Tuning itself never reads it: a study
always starts from params.yaml's hand-set values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from sparsebench.core.schema import Strict, validate
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import atomic_write

TUNED_DIR = Path("tuned")


class Measured(Strict):
    """One trial's figures under the tuning protocol (one seed, validation split)."""

    trial: int
    val_accuracy: float
    sparsity: float


class TunedFile(Strict):
    """The content of ``tuned/<key>.yaml``."""

    method: str  # the key under methods:
    study: str
    objective: str
    target_sparsity: float = Field(gt=0, lt=1)
    seed: int
    finished_trials: int = Field(ge=1)
    best: Measured
    handset: Measured | None = None  # params.yaml's values, trial 0 of the study
    params: dict[str, Any]  # parameter (dotted into nested sections) -> value


def tuned_path(key: str) -> Path:
    return TUNED_DIR / f"{key}.yaml"


def read_tuned(key: str) -> TunedFile | None:
    """The validated ``tuned/<key>.yaml``, or None when there is none."""
    path = tuned_path(key)
    if not path.exists():
        return None
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{where}: cannot be read as YAML ({type(exc).__name__}); delete it or "
                         "run sparsebench tune again") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: {raw!r:.40} is not allowed; a mapping written by "
                         "sparsebench tune")
    tuned = validate(TunedFile, raw, prefix=f"{where}: ")
    if tuned.method != key:
        raise UsageError(f"{where}: method: {tuned.method!r} is not allowed; allowed: {key!r} "
                         "(the file's name)")
    return tuned


def set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """``cfg["a"]["b"] = value`` for ``"a.b"``, creating the nested mappings on the way."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = cfg.get(part)
        cfg[part] = child = dict(child) if isinstance(child, dict) else {}
        cfg = child
    cfg[leaf] = value


def overlay(cfg: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``cfg`` with the (dotted) ``values`` set."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items()}
    for dotted, value in values.items():
        set_dotted(out, dotted, value)
    return out


def write_tuned(tuned: TunedFile) -> Path:
    """Write ``tuned/<key>.yaml`` atomically, with a header that says what it is."""
    path = tuned_path(tuned.method)
    header = (f"# Written by `sparsebench tune --method {tuned.method}` from study "
              f"{tuned.study!r}.\n# Laid over methods.{tuned.method} of params.yaml by every "
              "stage; delete this file to use the hand-set values.\n")
    body = yaml.safe_dump(tuned.model_dump(), sort_keys=False)
    atomic_write(path, header + body)
    return path
