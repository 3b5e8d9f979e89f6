"""The ``run`` stage: every run (method x level x seed, and bracket points) of the suite, in
one executor call (`pipeline.executor`: the local pool or a Ray cluster), so that the executor
sees the whole suite's pending runs at once and keeps every worker busy to the end.

Cached runs are kept (`pipeline.cache.run_fingerprint`); a prune phase that does not read the
level (admm_l1, SAS-ADMM) is trained once per seed and finished by each level's run; each run
logs its MLflow run live from wherever it trains. Then each method's summary files are
written (`pipeline.summary`). Outputs appear whole or not at all.
"""

from __future__ import annotations

import json
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsebench.core import distributed
from sparsebench.data import dataset_info
from sparsebench.methods import MethodParams, method_class
from sparsebench.pipeline import profile
from sparsebench.pipeline.cache import run_fingerprint, shared_fingerprint
from sparsebench.pipeline.calibrate import read_calibration
from sparsebench.pipeline.devices import placement_of, stage_device
from sparsebench.pipeline.executor import run_tasks
from sparsebench.pipeline.hooks import chain_hooks, live_epochs, log_epoch
from sparsebench.pipeline.summary import write_method_metrics
from sparsebench.pipeline.tasks import Job, Placement, Task, here, raise_failures, splits
from sparsebench.pipeline.tracker import RunTracker, run_records
from sparsebench.run import (
    RESULT,
    TRAJECTORY,
    cached,
    environment,
    execute,
    read_result,
    shared_prune,
)
from sparsebench.suite.load import check_method
from sparsebench.suite.params import Params
from sparsebench.suite.plan import DATA_FILE, Planned, plan, pretrained_file, seeds_of
from sparsebench.tracking.runs import RUN_STATE, LiveRun
from sparsebench.util.errors import TrackingFailed
from sparsebench.util.flatten import flatten
from sparsebench.util.paths import run_dir

if TYPE_CHECKING:
    import torch

#: what ``runs/`` holds beside the methods' directories
PRETRAIN = "pretrain"
#: what a run reads of the prepared data (`tasks.splits`)
SPLITS = ("train", "val", "test")


def method_runs(params: Params, methods: dict[str, MethodParams], key: str) -> list[Planned]:
    """The planned runs of ``methods.<key>`` (with its calibration when it needs one)."""
    calibration = None
    if method_class(key, methods[key].model_dump()).kind() == "regularised":
        calibration = read_calibration(key, methods[key])
    return plan(params, methods, key, calibration)


def sweep(params: Params, methods: dict[str, MethodParams],
          keys: list[str] | None = None) -> dict[str, dict]:
    """Every run of the methods ``keys`` (all of params.yaml's when None, the ``run`` stage)
    in one executor call: cached runs are kept, the others run side by side, each logging its
    MLflow run live (under a (method, level) parent); then the runs the tracker lacks are
    completed from their files, each method's metrics files are written and its parents get
    the report's numbers. Method key -> its summary."""
    every = keys is None
    keys = list(methods) if keys is None else keys
    for key in keys:
        check_method(key, methods)
    started = time.perf_counter()
    device = stage_device(params)
    tracked = params.tracking.enabled and distributed.writer()
    placement = placement_of(params, tracked=tracked)
    shape = tuple(dataset_info(DATA_FILE)["shape"])
    plans = {key: method_runs(params, methods, key) for key in keys}
    results: dict[str, dict] = {}
    tasks: list[Task] = []
    names: dict[str, tuple[str, Planned | Path]] = {}  # task -> (method, run or trajectory)
    trained = 0
    trackers: dict[str, RunTracker | None] = {}
    for key in keys:
        found, todo, later = _cached_runs(params, plans[key])
        results.update(found)
        prunes = _shared_prunes(params, todo)  # a series step never shares (`suite.plan`)
        _announce(key, plans[key], found, todo, later, prunes)
        todo += [(p, None) for p in later]
        trained += len(todo)
        trackers[key] = (RunTracker(params, key, method_class(
            key, methods[key].model_dump()).name, plans[key]) if tracked else None)
        first = seeds_of(params, methods[key])[0]
        new = _tasks(params, prunes, todo, device, shape, placement, trackers[key], first)
        tasks += new
        names.update({name: (key, q.spec.shared_prune) for name, (q, _) in prunes.items()})
        names.update({p.name: (key, p) for p, _ in todo})
    print(f"run: {trained} runs to train on {_where(placement)}", flush=True)
    if tasks and placement.backend == "local":
        splits(*SPLITS)  # loaded once here; the forked workers inherit it
    failures = run_tasks(tasks, placement, on_done=_on_done(results, names))
    summaries, tracking_failed = {}, None
    for key in keys:
        if distributed.writer():
            _remove_stale(key, plans[key])
        tracker = trackers[key]
        # once the tracker failed, the other methods' runs are left for the rerun too
        failed = tracking_failed or _complete_tracking(tracker, key, plans[key], results)
        tracking_failed = failed
        if any(names[f][0] == key for f in failures):
            continue
        summaries[key] = distributed.rank0_first(
            lambda key=key: write_method_metrics(key, methods[key], plans[key], results))
        if tracker is not None and failed is None:
            with profile.timed("tracking"):
                tracker.finish(summaries[key])
    if every and distributed.writer():
        _remove_unconfigured(keys)
    raise_failures("run", failures, sum(len(plans[k]) for k in keys))
    if tracking_failed is not None:
        raise tracking_failed
    profile.record(workers=placement.workers, trained=trained)
    print(f"run: done in {time.perf_counter() - started:.1f}s", flush=True)
    return summaries


def _where(placement: Placement) -> str:
    gpus = (f" on {len(placement.gpus)} GPUs x {placement.runs_per_gpu}"
            if placement.gpus else "")
    if placement.backend == "ray":
        return f"the Ray cluster at {placement.address} ({placement.workers} at once{gpus})"
    return f"{placement.workers} workers x {placement.threads} threads{gpus}"


@lru_cache(maxsize=4)
def _environment(device: torch.device, threads: int, workers: int) -> dict[str, Any]:
    """The environment record of this worker's runs (`run.environment`), once per process."""
    env = environment(device, threads, workers)
    if distributed.active():
        env.update(distributed.describe())
    return env


def _cached_runs(params: Params, planned: list[Planned]
                 ) -> tuple[dict[str, dict], list[tuple[Planned, str]], list[Planned]]:
    """(name -> result of each cached run, the runs to train with their fingerprints, the
    series steps whose previous step trains in this call: their fingerprint covers that
    step's model, known once it is done)."""
    results: dict[str, dict] = {}
    todo: list[tuple[Planned, str]] = []
    later: list[Planned] = []
    for p in planned:  # plan() lists a step after the one it starts from
        if p.after is not None and p.after.name not in results:
            later.append(p)
            continue
        fp = run_fingerprint(params, p)
        found = cached(p.out, fp)
        if found is not None:
            results[p.name] = found
        else:
            todo.append((p, fp))
    return results, todo, later


def _announce(key: str, planned: list[Planned], results: dict, todo: list, later: list,
              prunes: dict) -> None:
    print(f"run {key}: {len(planned)} runs, {len(results)} cached, {len(todo)} to train" + (
        f", {len(prunes)} shared prune phase{'s' * (len(prunes) != 1)}" if prunes else "") + (
        f", {len(later)} later steps of progressive series" if later else ""), flush=True)


def _tasks(params: Params, prunes: dict[str, tuple[Planned, str]],
           todo: list[tuple[Planned, str | None]], device: torch.device,
           shape: tuple[int, ...], placement: Placement, tracker: RunTracker | None,
           first_seed: int) -> list[Task]:
    """The shared prune trajectories first, then every run to train, each after the task it
    starts from (its previous series step, or its seed's trajectory)."""
    tasks = [_prune_task(name, q, tfp, device) for name, (q, tfp) in prunes.items()]
    after = {q.spec.shared_prune: name for name, (q, _) in prunes.items()}
    tasks += [_run_task(params, p, fp, device, shape, placement, tracker, first_seed,
                        after=p.after.name if fp is None else after.get(p.spec.shared_prune))
              for p, fp in todo]
    return tasks


def _on_done(results: dict[str, dict], names: dict[str, tuple[str, Planned | Path]]):
    """The hook the executor calls here after each task that succeeded (its files in
    place): its line, its result and its seconds in the profile."""

    def done(t: Task) -> None:
        _, p = names[t.name]
        if isinstance(p, Path):  # a shared prune trajectory
            record = json.loads((p / TRAJECTORY).read_text())
            print(f"run {t.name}: shared by its levels, in {record['seconds']['prune']:.1f}s "
                  f"(training {record['seconds']['train']:.1f}s)", flush=True)
            profile.record(train=record["seconds"]["train"])
            return
        results[p.name] = read_result(json.loads((p.out / RESULT).read_text()))
        r = results[p.name]
        print(f"run {p.name}: test_accuracy {r['figures']['test_accuracy']:.4f} compression "
              f"{r['figures']['compression']:.2f}x in {r['seconds']['run']:.1f}s "
              f"(training {r['seconds']['train']:.1f}s)", flush=True)
        # a shared prune's epochs are the trajectory task's, counted once
        profile.record(train=r["seconds"]["train"] - r["seconds"].get("shared", 0.0),
                       evaluate=r["seconds"]["evaluate"])
    return done


def _complete_tracking(tracker: RunTracker | None, key: str, planned: list[Planned],
                       results: dict[str, dict]) -> TrackingFailed | None:
    """Complete what the tracking server lacks from the runs' own records; the failure, if
    any, is returned to be raised once the method's files are written."""
    if tracker is None:
        return None
    finished = [(tracker.run_info(p, results[p.name]["fingerprint"],
                                  results[p.name]["environment"]), run_records(p.out), p.name)
                for p in planned if p.name in results]
    try:
        with profile.timed("tracking"):
            if written := tracker.sync(finished):
                print(f"run {key}: tracking: {written} runs completed from their records",
                      flush=True)
    except TrackingFailed as exc:
        return exc
    return None


def _shared_prunes(params: Params, runs: list[tuple[Planned, str]]
                   ) -> dict[str, tuple[Planned, str]]:
    """The shared prune trajectories that ``runs`` (to train) need and no cache holds: task
    name -> (the first run that needs it, the trajectory's fingerprint)."""
    found: dict[str, tuple[Planned, str]] = {}
    seen: set[Path] = set()
    for p, _ in runs:
        where = p.spec.shared_prune
        if where is None or where in seen:
            continue
        seen.add(where)
        fp = shared_fingerprint(params, p)
        if cached(where, fp, TRAJECTORY) is None:
            found[f"{p.spec.key} prune seed {p.spec.seed}"] = (p, fp)
    return found


def _prune_task(name: str, p: Planned, fp: str, device: torch.device) -> Task:
    """The job ``name`` (`_shared_prunes`): the prune trajectory that ``p``'s seed shares
    across levels."""

    def fn() -> None:
        shared_prune(p.spec, splits(*SPLITS), here(device), p.spec.shared_prune, fingerprint=fp,
                     on_epoch=log_epoch(name))
    return Task(name, fn, reads=(*pretrained_file(p.spec), *p.spec.model.files()),
                writes=(p.spec.shared_prune,))


def _run_task(params: Params, p: Planned, fp: str | None, device: torch.device,
              shape: tuple[int, ...], placement: Placement, tracker: RunTracker | None,
              first_seed: int, after: str | None = None) -> Task:
    """The job of run ``p``, made at its turn: `execute` it (resuming its ``.work`` state),
    logging its MLflow run live; the latency is measured on the method's first seed only.
    ``fp`` None: a progressive step whose previous step (``after``) trains first; its
    fingerprint is taken at its turn, and a result cached by then is kept."""
    latency = ((tuple(params.evaluate.latency_batch_sizes), params.evaluate.latency_repeats)
               if p.spec.seed == first_seed else None)

    def start() -> Job | None:
        known = fp or run_fingerprint(params, p)
        if fp is None and cached(p.out, known) is not None:
            return None
        # its environment is the worker's machine's: the worker fills it in
        info = tracker.run_info(p, known, {}) if tracker is not None else None
        if info is not None and not tracker.wants(info):
            info = None  # logged whole already
        threads, workers = placement.threads, placement.workers

        def fn() -> None:
            where = here(device)
            env = _environment(where, threads, workers)
            live = None
            work = p.out.with_name(f".{p.out.name}.work")  # the run's resume state
            if info is not None:
                info.params.update(flatten("env", env))
                live = LiveRun(info, work / RUN_STATE, p.name)
            with live_epochs(live, work) as on_epoch:
                execute(p.spec, splits(*SPLITS), where, p.out, fingerprint=known, budget=p.budget,
                        shape=shape, env=env, on_epoch=chain_hooks(log_epoch(p.name), on_epoch),
                        latency=latency)
                if live is not None:
                    live.finish(run_records(p.out))
        shared = (p.spec.shared_prune,) if p.spec.shared_prune is not None else ()
        return Job(fn, reads=(*pretrained_file(p.spec), *p.spec.model.files(), *shared),
                   writes=(p.out,))
    return Task(p.name, after=after, start=start)


def _remove_stale(key: str, planned: list[Planned]) -> None:
    """Delete run directories of levels, seeds or points no longer configured (so the stage's
    output is exactly its configuration); work directories of unfinished runs stay."""
    keep = {p.out.resolve() for p in planned}
    keep |= {p.spec.shared_prune.resolve() for p in planned if p.spec.shared_prune}
    levels = {q.parent for q in keep}
    root = run_dir(key)
    if not root.is_dir():
        return
    for level in root.iterdir():
        if level.name.startswith("."):  # work directories, DVC's .gitignore
            continue
        if level.resolve() not in levels:
            shutil.rmtree(level) if level.is_dir() else level.unlink()
            continue
        for entry in level.iterdir():
            if not entry.name.startswith(".") and entry.resolve() not in keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _remove_unconfigured(keys: list[str]) -> None:
    """The directories and summary files of methods no longer in params.yaml: the ``run``
    stage's outputs (``runs``, ``evaluation``, ``metrics``) are exactly its configuration."""
    kept = {*keys, PRETRAIN}
    root = Path("runs")
    for entry in root.iterdir() if root.is_dir() else []:
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in kept:
            shutil.rmtree(entry)
    for folder in ("evaluation", "metrics"):
        for entry in Path(folder).glob("*.json"):
            if entry.stem not in kept:
                entry.unlink()
