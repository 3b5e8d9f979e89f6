"""Calibration: the strength of a regularisation-driven method that lands it on each level.

gRDA (c), LinBreg, AdaBreg and ProxSGD (lambda) have no sparsity target: their sparsity is what
their regulariser produces. To put them on the suite's curve, ``sparsebench calibrate --method
KEY`` searches, per level, the strength whose run (the suite's protocol, first seed, the
validation split only: the test split is never read) ends within ``levels.tolerance`` of the
level's compression. It is an offline step like tuning: the result is committed as
``calibrated/<key>.yaml`` and `make repro` only reads it; its trials count in the method's
tuning budget (the file says how many).

Search: the compression a run reaches grows with the strength. The first round runs a few
strengths spread around the configured one; each later round runs, for every level not yet hit,
the strength that the measured points give for it by interpolation in (log strength, log
compression), or one a factor further out beyond the measured range. At most ``rounds`` rounds:
a level then still missed is *bracketed* when measured points lie on both sides of it (the
pipeline runs both and interpolates the level's figures between them, marked interpolated), and
*unreachable* otherwise (reported; no point is drawn). No hidden magnitude projection: a point
is what the method produced.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from sparsebench.core.levels import MAX_COMPRESSION, level_name, within
from sparsebench.core.schema import Strict, validate
from sparsebench.core.train import resolve_device
from sparsebench.data import load_splits
from sparsebench.methods import MethodParams, build_method, method_class, method_params
from sparsebench.pipeline.workers import Task, run_tasks
from sparsebench.run import RunSpec, run, validation_figures
from sparsebench.suite.params import Params
from sparsebench.suite.plan import (
    DATA_FILE,
    augment_of,
    levels_of,
    model_spec,
    retrain_phase,
    seeds_of,
)
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import atomic_write, run_dir, seed_dir

CALIBRATED_DIR = Path("calibrated")


FIRST_ROUND = (0.25, 1.0, 4.0, 16.0)  # factors on the configured strength


STEP_OUT = 4.0  # the factor a guess goes beyond the measured range


class Trial(Strict):
    value: float
    compression: float
    val_accuracy: float
    round: int


class LevelResult(Strict):
    level: float
    status: Literal["reached", "bracketed", "unreachable"]
    value: float | None = None  # reached: the strength
    low: Trial | None = None  # bracketed: the measured points on both sides
    high: Trial | None = None
    compression: float | None = None  # reached: what the calibration run gave


class CalibrationFile(Strict):
    """The content of ``calibrated/<key>.yaml``."""
    method: str
    strength: str
    config_digest: str  # the method's parameters but the strength: a change makes it stale
    seed: int
    tolerance: float = Field(gt=0)
    trials: int = Field(ge=1)  # runs spent (counted in the method's tuning budget)
    levels: dict[str, LevelResult]
    history: list[Trial]

    def points(self, level: float) -> list[tuple[str, float]]:
        """The strengths to run at ``level``: one, a low/high bracket, or none."""
        found = self.levels.get(level_name(level))
        if found is None:
            raise UsageError(f"calibrated/{self.method}.yaml: no entry for level {level:g}x; "
                             f"run sparsebench calibrate --method {self.method}")
        if found.status == "reached":
            return [("", found.value)]
        if found.status == "bracketed":
            return [("low", found.low.value), ("high", found.high.value)]
        return []


def calibrated_path(key: str) -> Path:
    return CALIBRATED_DIR / f"{key}.yaml"


def config_digest(key: str, method: MethodParams) -> str:
    """SHA-256 of the method's parameters without its strength and its level subset (and
    ``progressive``, which a calibrated method cannot set: the digests of the calibrations
    made before the key existed stay valid)."""
    strength = method_class(key, method.model_dump()).strength
    raw = method.model_dump(mode="json", exclude={strength, "levels", "progressive"})
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def read_calibration(key: str, method: MethodParams) -> CalibrationFile | None:
    """The validated ``calibrated/<key>.yaml``, or None when there is none; a file made for other
    parameters of the method is refused."""
    path = calibrated_path(key)
    if not path.exists():
        return None
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot be read as YAML ({type(exc).__name__}); run "
                         f"sparsebench calibrate --method {key} again") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: {raw!r:.40} is not allowed; a mapping written by "
                         "sparsebench calibrate")
    found = validate(CalibrationFile, raw, prefix=f"{path}: ")
    if found.config_digest != config_digest(key, method):
        raise UsageError(f"{path}: made for other parameters of methods.{key} (digest "
                         f"{found.config_digest}); run sparsebench calibrate --method {key} "
                         "again")
    return found


def _log(x: float) -> float:
    return math.log(min(max(x, 1e-300), MAX_COMPRESSION))


def next_guess(history: list[Trial], level: float) -> float:
    """The strength the measured points give for ``level``: interpolated in (log strength, log
    compression) between the nearest points around it, or `STEP_OUT` beyond the range."""
    ordered = sorted(history, key=lambda t: t.value)
    below = [t for t in ordered if t.compression < level]
    above = [t for t in ordered if t.compression >= level]
    if not above:
        return max(t.value for t in ordered) * STEP_OUT
    if not below:
        return min(t.value for t in ordered) / STEP_OUT
    lo = max(below, key=lambda t: t.value)
    hi = min((t for t in above if t.value > lo.value), key=lambda t: t.value, default=None)
    if hi is None:  # not monotone: go between the closest on each side
        hi = min(above, key=lambda t: abs(_log(t.compression) - _log(level)))
    span = _log(hi.compression) - _log(lo.compression)
    if span <= 0:
        return math.sqrt(lo.value * hi.value)
    frac = (_log(level) - _log(lo.compression)) / span
    return math.exp(math.log(lo.value) + frac * (math.log(hi.value) - math.log(lo.value)))


def saturated(history: list[Trial], level: float) -> bool:
    """Whether stronger regularisation stopped adding sparsity below ``level``: the two
    strongest runs are both short of it and within 1% of each other (LinBreg from a 1% sparse
    initialisation cannot pass about 100x, whatever its lambda)."""
    strongest = sorted(history, key=lambda t: t.value)[-2:]
    return (len(strongest) == 2 and all(t.compression < level for t in strongest)
            and abs(strongest[1].compression / strongest[0].compression - 1) < 0.01)


def settle(history: list[Trial], level: float, tolerance: float) -> LevelResult:
    """What the measured points say about ``level``: reached, bracketed or unreachable."""
    hits = [t for t in history if within(t.compression, level, tolerance)]
    if hits:
        best = min(hits, key=lambda t: abs(_log(t.compression) - _log(level)))
        return LevelResult(level=level, status="reached", value=best.value,
                           compression=best.compression)
    below = [t for t in history if t.compression < level]
    above = [t for t in history if t.compression > level]
    if below and above:
        low = max(below, key=lambda t: t.compression)
        high = min(above, key=lambda t: t.compression)
        return LevelResult(level=level, status="bracketed", low=low, high=high)
    return LevelResult(level=level, status="unreachable")


def calibrate(params: Params, methods: dict[str, MethodParams], key: str, *, rounds: int = 6,
              workers: int = 1, threads: int = 1) -> CalibrationFile:
    """Search the strength of ``methods.<key>`` per level; write ``calibrated/<key>.yaml``."""
    method = methods[key]
    cls = method_class(key, method.model_dump())
    if cls.kind() != "regularised":
        raise UsageError(f"--method: {key!r} takes its level as a target ({cls.kind()}); "
                         "only regularisation-driven methods (grda, linbreg, adabreg, proxsgd) "
                         "are calibrated")
    if rounds < 1:
        raise UsageError(f"--rounds: {rounds} is not allowed; allowed: at least 1")
    levels = [lv for lv in levels_of(params, key, method) if lv is not None]
    device = resolve_device(params.device)
    data = load_splits(DATA_FILE, ("train", "val"))
    spec_model, retrain = model_spec(params), retrain_phase(params, method)
    augment = augment_of(params)
    seed, tol = seeds_of(params, method)[0], params.levels.tolerance
    start = getattr(method, cls.strength)
    history: list[Trial] = []
    guesses = [start * f for f in FIRST_ROUND] if start > 0 else [1e-4, 1e-3, 1e-2, 1e-1]
    run_round = _Round(key, method, cls.strength, seed, retrain, spec_model, data, device,
                       augment, workers, threads)
    with tempfile.TemporaryDirectory(prefix="calibrate-") as scratch:
        for number in range(1, rounds + 1):
            seen = {round(t.value, 12) for t in history}
            todo = sorted({g for g in guesses if round(g, 12) not in seen})
            history += run_round(number, todo, Path(scratch))
            if not history:
                raise UsageError(f"calibrate {key}: every run of round {number} failed "
                                 f"({run_round.failure})")
            missed = [lv for lv in levels if settle(history, lv, tol).status != "reached"
                      and not saturated(history, lv)]
            if not missed:
                break
            guesses = [next_guess(history, lv) for lv in missed]
    result = CalibrationFile(
        method=key, strength=cls.strength, config_digest=config_digest(key, method), seed=seed,
        tolerance=tol, trials=len(history),
        levels={level_name(lv): settle(history, lv, tol) for lv in levels}, history=history)
    for name, found in result.levels.items():
        if found.status != "reached":
            print(f"calibrate {key}: level {name} {found.status} after {rounds} rounds "
                  f"or fewer ({len(history)} runs)", flush=True)
    atomic_write(calibrated_path(key), yaml.safe_dump(result.model_dump(mode="json"),
                                                           sort_keys=False))
    return result


class _Round:
    """One round of the search: a run per strength, side by side, each read back as a
    `Trial` (``failure``: one of the round's failures, if any)."""

    def __init__(self, key: str, method: MethodParams, strength: str, seed: int,
                 retrain: Any, spec_model: Any, data: dict, device: Any, augment: Any,
                 workers: int, threads: int):
        self.key, self.method, self.strength, self.seed = key, method, strength, seed
        self.setup = (retrain, spec_model, data, device, augment)
        self.workers, self.threads = workers, threads
        self.failure: Any = None

    def __call__(self, number: int, todo: list[float], scratch: Path) -> list[Trial]:
        outs = [scratch / f"{number}-{i}.json" for i in range(len(todo))]
        tasks = [_trial(self.key, self.method, self.strength, value, out, self.seed,
                        *self.setup) for value, out in zip(todo, outs, strict=True)]
        failures = run_tasks(tasks, workers=self.workers, threads=self.threads)
        trials = []
        for task, value, out in zip(tasks, todo, outs, strict=True):
            if task.name in failures:
                continue
            figures = json.loads(out.read_text())
            trials.append(Trial(value=value, compression=min(figures["compression"],
                                                              MAX_COMPRESSION),
                                val_accuracy=figures["val_accuracy"], round=number))
            print(f"calibrate {self.key} round {number}: {self.strength} {value:.4g} -> "
                  f"compression {figures['compression']:.2f}x, val_accuracy "
                  f"{figures['val_accuracy']:.4f}", flush=True)
        self.failure = next(iter(failures.values()), None)
        return trials


def _trial(key: str, method: MethodParams, strength: str, value: float, out: Path, seed: int,
           retrain: Any, spec_model: Any, data: dict, device: Any, augment: Any = None) -> Any:
    """One calibration run at ``strength = value``: its validation figures go to ``out``."""
    at = method_params(key, {**method.model_dump(exclude_none=True), strength: value})
    pretrained = seed_dir(run_dir("pretrain"), seed) if build_method(key, at).from_pretrained \
        else None
    spec = RunSpec(key, at, None, seed, retrain, spec_model, pretrained, augment=augment)

    def trial() -> None:
        outcome = run(spec, data, device)
        out.write_text(json.dumps(validation_figures(outcome.model, data["val"], device)))

    return Task(f"calibrate {key} {strength}={value:.4g}", trial)
