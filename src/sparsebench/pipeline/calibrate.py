"""Calibration: the strength of a regularisation-driven method that lands each seed on each level.

gRDA (c), LinBreg, AdaBreg and ProxSGD (lambda) have no sparsity target: their sparsity is what
their regulariser produces, and it moves with the seed. To put them on the suite's curve,
``sparsebench calibrate --method KEY`` searches, per seed and level, the strength whose run (the
suite's protocol, the validation split only: the test split is never read) ends within
``levels.tolerance`` of the level's compression, so that every seed's point sits at its level
and no seed's figure is read off another seed's strength. It is an offline step like tuning:
the result is committed as ``calibrated/<key>.yaml`` and `make repro` only reads it; its trials
count in the method's tuning budget (the file says how many).

Search: the compression a run reaches grows with the strength. A seed's first round runs the
strengths the other seeds reached (or a few spread around the configured one); each later round
runs, for every (seed, level) not yet hit, the strength that the seed's measured points give
by interpolation in (log strength, log compression), or, with points on one side only, the
step that the slope of all seeds' points gives (at most a factor `STEP_OUT`). The trials of an
earlier calibration with the same parameters, and the suite's own cached runs (keyed by their
fingerprint), count as measured points, so a tighter tolerance or a new seed costs only the
runs it adds. At most ``rounds`` rounds: a level then still missed is *bracketed* when that
seed's points lie on both sides of it (the pipeline runs both and interpolates the level's
figures between them, marked interpolated), and *unreachable* otherwise (reported; no point is
drawn); a run that has collapsed (validation accuracy at most `COLLAPSE` times chance) counts
for neither. No hidden magnitude projection: a point is what the method produced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from sparsebench.core.levels import MAX_COMPRESSION, level_name, within
from sparsebench.core.schema import Strict, validate
from sparsebench.core.train import resolve_device
from sparsebench.data import dataset_info, load_splits
from sparsebench.methods import MethodParams, build_method, method_class, method_params
from sparsebench.pipeline.cache import run_fingerprint
from sparsebench.pipeline.executor import run_tasks
from sparsebench.pipeline.tasks import Placement, Task
from sparsebench.run import RESULT, RunSpec, cached, environment, execute, run, validation_figures
from sparsebench.suite.params import Params
from sparsebench.suite.plan import (
    DATA_FILE,
    Planned,
    augment_of,
    levels_of,
    model_spec,
    plan,
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


class SeedCalibration(Strict):
    """One seed's search: what each level settled as, and every point it measured."""
    levels: dict[str, LevelResult]
    history: list[Trial]


class CalibrationFile(Strict):
    """The content of ``calibrated/<key>.yaml``."""
    method: str
    strength: str
    config_digest: str  # the method's parameters but the strength: a change makes it stale
    tolerance: float = Field(gt=0)
    trials: int = Field(ge=0)  # runs spent, all seeds (counted in the method's tuning budget)
    seeds: dict[int, SeedCalibration]

    def points(self, level: float, seed: int) -> list[tuple[str, float]]:
        """The strengths to run ``seed`` with at ``level``: one, a low/high bracket, or none."""
        entry = self.seeds.get(seed)
        if entry is None:
            raise UsageError(f"calibrated/{self.method}.yaml: no entry for seed {seed}; run "
                             f"sparsebench calibrate --method {self.method}")
        found = entry.levels.get(level_name(level))
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


def progress_path(key: str) -> Path:
    """Every trial of a search not yet finished (a killed one resumes from them); removed once
    ``calibrated/<key>.yaml`` is written."""
    return CALIBRATED_DIR / f".{key}.trials.yaml"


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
    if "seed" in raw and "seeds" not in raw:
        raise UsageError(f"{path}: calibrated on seed {raw['seed']} alone; allowed: a file "
                         f"with every seed's strengths; run sparsebench calibrate --method "
                         f"{key} again")
    found = validate(CalibrationFile, raw, prefix=f"{path}: ")
    if found.config_digest != config_digest(key, method):
        raise UsageError(f"{path}: made for other parameters of methods.{key} (digest "
                         f"{found.config_digest}); run sparsebench calibrate --method {key} "
                         "again")
    return found


def _log(x: float) -> float:
    return math.log(min(max(x, 1e-300), MAX_COMPRESSION))


def next_guess(history: list[Trial], level: float, reference: list[Trial] = ()) -> float:
    """The strength the measured points give for ``level``: interpolated in (log strength, log
    compression) between the nearest points around it; with points on one side only, a step
    from the nearest one along the slope that ``reference`` (every seed's points) gives there,
    or `STEP_OUT` beyond the range."""
    ordered = sorted(history, key=lambda t: t.value)
    below = [t for t in ordered if t.compression < level]
    above = [t for t in ordered if t.compression >= level]
    if not above or not below:
        slope = _slope(reference, level)
        if slope is None:
            return (max(t.value for t in ordered) * STEP_OUT if not above
                    else min(t.value for t in ordered) / STEP_OUT)
        near = min(ordered, key=lambda t: abs(_log(t.compression) - _log(level)))
        step = (_log(level) - _log(near.compression)) / slope
        bound = 2 * math.log(STEP_OUT)
        return near.value * math.exp(min(max(step, -bound), bound))
    lo = max(below, key=lambda t: t.value)
    hi = min((t for t in above if t.value > lo.value), key=lambda t: t.value, default=None)
    if hi is None:  # not monotone: go between the closest on each side
        hi = min(above, key=lambda t: abs(_log(t.compression) - _log(level)))
    span = _log(hi.compression) - _log(lo.compression)
    if span <= 0:
        return math.sqrt(lo.value * hi.value)
    frac = (_log(level) - _log(lo.compression)) / span
    return math.exp(math.log(lo.value) + frac * (math.log(hi.value) - math.log(lo.value)))


def _slope(points: list[Trial], level: float) -> float | None:
    """d log(compression) / d log(strength) near ``level``: the least-squares slope over the
    points within a factor `STEP_OUT` of it in compression (None without two strengths there
    or a positive slope)."""
    near = [t for t in points if abs(_log(t.compression) - _log(level)) <= math.log(STEP_OUT)
            and t.compression < MAX_COMPRESSION]
    if len({t.value for t in near}) < 2:
        return None
    xs = [math.log(t.value) for t in near]
    ys = [_log(t.compression) for t in near]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope if slope > 0 else None


COLLAPSE = 2.0
"""A run whose validation accuracy is at most this many times chance (1 / classes) has
collapsed: it neither reaches nor brackets a level (`settle`)."""


def saturated(history: list[Trial], level: float) -> bool:
    """Whether stronger regularisation stopped adding sparsity below ``level``: the two
    strongest runs are both short of it, within 1% of each other, and at strengths at least
    twice apart (LinBreg from a 1% sparse initialisation cannot pass about 100x, whatever its
    lambda; two nearby strengths within 1% are the noise of one seed, not a ceiling)."""
    strongest = sorted(history, key=lambda t: t.value)[-2:]
    return (len(strongest) == 2 and all(t.compression < level for t in strongest)
            and abs(strongest[1].compression / strongest[0].compression - 1) < 0.01
            and strongest[1].value >= 2 * strongest[0].value)


def settle(history: list[Trial], level: float, tolerance: float,
           floor: float = 0.0) -> LevelResult:
    """What the measured points say about ``level``: reached, bracketed or unreachable, from
    the runs that have not collapsed (validation accuracy above ``floor``)."""
    history = [t for t in history if t.val_accuracy > floor]
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
              placement: Placement | None = None) -> CalibrationFile:
    """Search the strength of ``methods.<key>`` per seed and level, each round's runs side by
    side on this machine (``placement``: one worker by default); write
    ``calibrated/<key>.yaml``."""
    placement = placement or Placement(1, params.execution.threads,
                                       loaders=params.data.loader_workers)
    method = methods[key]
    cls = method_class(key, method.model_dump())
    if cls.kind() != "regularised":
        raise UsageError(f"--method: {key!r} takes its level as a target ({cls.kind()}); "
                         "only regularisation-driven methods (grda, linbreg, adabreg, proxsgd) "
                         "are calibrated")
    if rounds < 0:
        raise UsageError(f"--rounds: {rounds} is not allowed; allowed: at least 0 (0 writes "
                         "the file from the points measured so far)")
    levels = [lv for lv in levels_of(params, key, method) if lv is not None]
    device = resolve_device(params.device)
    seeds, tol = seeds_of(params, method), params.levels.tolerance
    floor = COLLAPSE / dataset_info(DATA_FILE)["num_classes"]
    histories = known_points(params, methods, key, levels, seeds)
    spent = sum(map(len, histories.values()))
    run_round = _Round(params, methods, key, cls.strength, device, placement)
    with tempfile.TemporaryDirectory(prefix="calibrate-") as scratch:
        for number in range(1, rounds + 1):
            todo = _guesses(histories, levels, tol, getattr(method, cls.strength), floor)
            if not todo:
                break
            found = run_round(number, todo, Path(scratch))
            if not found and not any(histories.values()):
                raise UsageError(f"calibrate {key}: every run of round {number} failed "
                                 f"({run_round.failure})")
            for seed, trial in found:
                histories[seed].append(trial)
            _save_progress(key, method, histories)
    trials = sum(map(len, histories.values()))
    result = CalibrationFile(
        method=key, strength=cls.strength, config_digest=config_digest(key, method),
        tolerance=tol, trials=trials,
        seeds={seed: SeedCalibration(levels={level_name(lv): settle(history, lv, tol, floor)
                                             for lv in levels}, history=history)
               for seed, history in histories.items()})
    for seed, entry in result.seeds.items():
        for name, found in entry.levels.items():
            if found.status != "reached":
                print(f"calibrate {key}: seed {seed} level {name} {found.status} after "
                      f"{rounds} rounds or fewer ({len(entry.history)} runs)", flush=True)
    print(f"calibrate {key}: {trials - spent} runs, {trials} points in all", flush=True)
    atomic_write(calibrated_path(key), yaml.safe_dump(result.model_dump(),
                                                      sort_keys=False))
    progress_path(key).unlink(missing_ok=True)
    run_round.keep(result)
    return result


def _save_progress(key: str, method: MethodParams, histories: dict[int, list[Trial]]) -> None:
    raw = {"config_digest": config_digest(key, method),
           "seeds": {seed: {"history": [t.model_dump() for t in history]}
                     for seed, history in histories.items()}}
    atomic_write(progress_path(key), yaml.safe_dump(raw, sort_keys=False))


def _guesses(histories: dict[int, list[Trial]], levels: list[float], tol: float,
             start: float, floor: float = 0.0) -> list[tuple[int, float, float | None]]:
    """The (seed, strength, level aimed at) runs of the next round: for a seed without points,
    one per level from the other seeds' points (or `FIRST_ROUND` around ``start``, aimed at no
    level, when there are none); else one per level it missed. Collapsed runs (validation
    accuracy at most ``floor``) guide nothing; a strength already run is not run again, so a
    guess that lands where the method collapses ends that level's search."""
    usable = {seed: [t for t in history if t.val_accuracy > floor]
              for seed, history in histories.items()}
    pooled = [t for history in usable.values() for t in history]
    todo: list[tuple[int, float, float | None]] = []
    for seed, history in usable.items():
        guesses: dict[float, float | None] = {}
        if not history and pooled:
            guesses = {next_guess(pooled, lv): lv for lv in levels}
        elif not history:
            guesses = dict.fromkeys([start * f for f in FIRST_ROUND] if start > 0
                                    else [1e-4, 1e-3, 1e-2, 1e-1])
        else:
            guesses = {next_guess(history, lv, pooled): lv for lv in levels
                       if settle(history, lv, tol).status != "reached"
                       and not saturated(history, lv)}
        seen = {round(t.value, 12) for t in histories[seed]}
        todo += [(seed, g, lv) for g, lv in sorted(guesses.items())
                 if round(g, 12) not in seen]
    return todo


def known_points(params: Params, methods: dict[str, MethodParams], key: str,
                 levels: list[float], seeds: list[int]) -> dict[int, list[Trial]]:
    """Every seed's points measured before: the trials of ``calibrated/<key>.yaml`` (made for
    the same parameters) and the suite's cached runs of the method at any strength, each
    checked against its fingerprint (their validation figures only)."""
    method = methods[key]
    histories: dict[int, list[Trial]] = {seed: [] for seed in seeds}
    for seed, history in _previous_trials(key, method).items():
        if seed in histories:
            histories[seed] = [t.model_copy(update={"round": 0}) for t in history]
    strength = method_class(key, method.model_dump()).strength
    for seed in seeds:
        for level in levels:
            for out in sorted(seed_dir(run_dir(key, level_name(level)), seed).parent.glob(
                    f"seed{seed}*")):
                trial = _cached_trial(params, methods, key, strength, level, seed, out)
                values = {round(t.value, 12) for t in histories[seed]}
                if trial is not None and round(trial.value, 12) not in values:
                    histories[seed].append(trial)
    return histories


def _previous_trials(key: str, method: MethodParams) -> dict[int, list[Trial]]:
    """The trials of ``calibrated/<key>.yaml`` and of an unfinished search (`progress_path`)
    made for these parameters (a file of one seed, as written before every seed was
    calibrated, counts for its seed)."""
    found: dict[int, list[Trial]] = {}
    for path in (calibrated_path(key), progress_path(key)):
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if not isinstance(raw, dict) or raw.get("config_digest") != config_digest(key, method):
            continue
        if "seed" in raw and "seeds" not in raw:
            raw = {"seeds": {raw["seed"]: {"history": raw.get("history", [])}}}
        try:
            for seed, entry in raw["seeds"].items():
                known = found.setdefault(int(seed), [])
                values = {round(t.value, 12) for t in known}
                known += [t for t in map(Trial.model_validate, entry["history"])
                          if round(t.value, 12) not in values]
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return found


def _cached_trial(params: Params, methods: dict[str, MethodParams], key: str, strength: str,
                  level: float, seed: int, out: Path) -> Trial | None:
    """The run at ``out`` as a trial, when its fingerprint is the one the suite would give a
    run of this seed at this level and its strength (else None)."""
    try:
        result = json.loads((out / RESULT).read_text())
        value = float(result["params"][strength])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if "-" in out.name:
        return None  # a bracket's point: not a run at one strength for the level
    planned = pipeline_run(params, methods, key, strength, seed, value, level)
    found = cached(out, run_fingerprint(params, planned)) if planned.out == out else None
    if found is None:
        return None
    figures = found["figures"]
    return Trial(value=value, compression=min(figures["compression"], MAX_COMPRESSION),
                 val_accuracy=figures["val_accuracy"], round=0)


def pipeline_run(params: Params, methods: dict[str, MethodParams], key: str, strength: str,
                 seed: int, value: float, level: float) -> Planned:
    """The suite's planned run of ``seed`` at ``level`` with ``strength = value`` (`plan`
    with a calibration that gives that strength at every level)."""
    one = CalibrationFile(
        method=key, strength=strength, config_digest="", tolerance=1.0, trials=0,
        seeds={seed: SeedCalibration(history=[], levels={
            level_name(lv): LevelResult(level=lv, status="reached", value=value)
            for lv in levels_of(params, key, methods[key]) if lv is not None})})
    only = {**methods, key: methods[key].model_copy(update={"seeds": [seed]})}
    return next(p for p in plan(params, only, key, one) if p.spec.level == level)


TRIALS = Path("runs", ".calibration")  # trial runs until the search ends (not a DVC output)


class _Round:
    """One round of the search: a run per (seed, strength), side by side, each read back as
    a `Trial` (``failure``: one of the round's failures, if any).

    A guess aimed at a level is the pipeline's own run of that seed at that level (`plan`,
    `sparsebench.run.execute`, evaluated as the pipeline does); the search reads its
    validation figures only. The run whose strength the search settles on is moved to its
    place under ``runs/<key>/`` (`keep`), where the ``run`` stage finds it cached by its
    fingerprint, so calibrating a seed costs its search and not one run more. A first round
    without any point to aim from runs at no level (figures on the validation split only)."""

    def __init__(self, params: Params, methods: dict[str, MethodParams], key: str,
                 strength: str, device: Any, placement: Placement):
        self.params, self.methods, self.key, self.strength = params, methods, key, strength
        self.device, self.placement = device, placement
        self.data = load_splits(DATA_FILE, ("train", "val", "test"))
        self.shape = tuple(dataset_info(DATA_FILE)["shape"])
        self.env = environment(device, placement.threads, placement.workers)
        self.failure: Any = None

    def planned(self, seed: int, value: float, level: float) -> tuple[Planned, str]:
        """The pipeline's run of ``seed`` at ``level`` with ``strength = value``, its
        directory under `TRIALS`, and its fingerprint."""
        found = pipeline_run(self.params, self.methods, self.key, self.strength, seed, value,
                             level)
        fp = run_fingerprint(self.params, found)
        return replace(found, out=TRIALS / self.key / f"seed{seed}" / fp[:16]), fp

    def __call__(self, number: int, todo: list[tuple[int, float, float | None]],
                 scratch: Path) -> list[tuple[int, Trial]]:
        first = seeds_of(self.params, self.methods[self.key])[0]
        tasks, reads = [], []
        for i, (seed, value, level) in enumerate(todo):
            name = f"calibrate {self.key} seed {seed} {self.strength}={value:.4g}"
            if level is None:
                out = scratch / f"{number}-{i}.json"
                tasks.append(_trial(self.key, self.methods[self.key], self.strength, value, out,
                                    seed, self.params, self.data, self.device, name))
                reads.append((seed, value, name, lambda out=out: json.loads(out.read_text())))
                continue
            planned, fp = self.planned(seed, value, level)
            if cached(planned.out, fp) is None:
                latency = ((tuple(self.params.evaluate.latency_batch_sizes),
                            self.params.evaluate.latency_repeats) if seed == first else None)
                tasks.append(Task(name, lambda p=planned, fp=fp, latency=latency: execute(
                    p.spec, self.data, self.device, p.out, fingerprint=fp, budget=p.budget,
                    shape=self.shape, env=self.env, latency=latency)))
            reads.append((seed, value, name,
                          lambda out=planned.out: json.loads((out / RESULT).read_text())[
                              "figures"]))
        failures = run_tasks(tasks, self.placement)
        trials = []
        for seed, value, name, read in reads:
            if name in failures:
                continue
            figures = read()
            trials.append((seed, Trial(value=value, compression=min(figures["compression"],
                                                                     MAX_COMPRESSION),
                                       val_accuracy=figures["val_accuracy"], round=number)))
            print(f"calibrate {self.key} round {number}: seed {seed} {self.strength} "
                  f"{value:.4g} -> compression {figures['compression']:.2f}x, val_accuracy "
                  f"{figures['val_accuracy']:.4f}", flush=True)
        self.failure = next(iter(failures.values()), None)
        return trials

    def keep(self, result: CalibrationFile) -> None:
        """Move each seed's run at its settled strength to its place under ``runs/<key>/``
        (when it was run aimed at that level, in this search or an interrupted one); drop the
        other trial runs."""
        for seed, entry in result.seeds.items():
            for found in entry.levels.values():
                if found.status != "reached":
                    continue
                stored, fp = self.planned(seed, found.value, found.level)
                if cached(stored.out, fp) is None:
                    continue
                target = seed_dir(run_dir(self.key, level_name(found.level)), seed)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(stored.out, target)
        shutil.rmtree(TRIALS / self.key, ignore_errors=True)


def _trial(key: str, method: MethodParams, strength: str, value: float, out: Path, seed: int,
           params: Params, data: dict, device: Any, name: str) -> Task:
    """A run at ``strength = value`` aimed at no level: its validation figures go to
    ``out``."""
    at = method_params(key, {**method.model_dump(exclude_none=True), strength: value})
    pretrained = seed_dir(run_dir("pretrain"), seed) if build_method(key, at).from_pretrained \
        else None
    spec = RunSpec(key, at, None, seed, retrain_phase(params, method), model_spec(params),
                   pretrained, augment=augment_of(params))

    def trial() -> None:
        outcome = run(spec, data, device)
        out.write_text(json.dumps(validation_figures(outcome.model, data["val"], device)))

    return Task(name, trial)
