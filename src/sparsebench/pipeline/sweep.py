"""The ``run@<method>`` stage: every run (level x seed, and bracket points) of one method.

Cached runs are kept (`pipeline.cache.run_fingerprint`), the others run side by side in the
worker pool (`pipeline.workers`), each logging its MLflow run live; a prune phase that does not
read the level (admm_l1, SAS-ADMM) is trained once per seed and finished by each level's run;
an idle worker starts the next uncached run of another method (`_filler`). Then the method's
summary files are written (`pipeline.summary`). Outputs appear whole or not at all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsebench.core import distributed
from sparsebench.data import dataset_info, load_splits
from sparsebench.methods import MethodParams, method_class
from sparsebench.pipeline import profile
from sparsebench.pipeline.cache import run_fingerprint, shared_fingerprint
from sparsebench.pipeline.calibrate import read_calibration
from sparsebench.pipeline.devices import stage_device, workers_of
from sparsebench.pipeline.hooks import chain_hooks, live_epochs, log_epoch
from sparsebench.pipeline.summary import write_method_metrics
from sparsebench.pipeline.tracker import RunTracker, run_records
from sparsebench.pipeline.workers import Task, in_child, raise_failures, run_tasks
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
from sparsebench.suite.plan import DATA_FILE, Planned, plan, seeds_of
from sparsebench.tracking.runs import RUN_STATE
from sparsebench.util.errors import TrackingFailed, UsageError
from sparsebench.util.paths import run_dir

if TYPE_CHECKING:
    import torch


def method_runs(params: Params, methods: dict[str, MethodParams], key: str) -> list[Planned]:
    """The planned runs of ``methods.<key>`` (with its calibration when it needs one)."""
    calibration = None
    if method_class(key, methods[key].model_dump()).kind() == "regularised":
        calibration = read_calibration(key, methods[key])
    return plan(params, methods, key, calibration)


def sweep(params: Params, methods: dict[str, MethodParams], key: str) -> dict:
    """Every run of ``methods.<key>``: cached runs are kept, the others run side by side, each
    logging its MLflow run live from its worker (under a (method, level) parent); then the runs
    the tracker lacks are completed from their files, the method's metrics files are written
    and the parents get the report's numbers."""
    check_method(key, methods)
    started = time.perf_counter()
    device = stage_device(params)
    planned = method_runs(params, methods, key)
    workers, threads, in_process = workers_of(params)
    env = in_child(environment, device, threads, workers)
    if distributed.active():
        env.update(distributed.describe())
    shape = tuple(dataset_info(DATA_FILE)["shape"])
    results, todo, later = _cached_runs(params, planned)
    prunes = _shared_prunes(params, todo)  # a series step never shares (`suite.plan`)
    _announce(key, planned, results, todo, later, prunes, workers, threads)
    todo += [(p, None) for p in later]
    data = load_splits(DATA_FILE, ("train", "val", "test")) if todo else {}
    tracker = (RunTracker(params, key, method_class(key, methods[key].model_dump()).name,
                          planned) if params.tracking.enabled and distributed.writer() else None)
    # one call: a series step starts as soon as its own previous step is done (`Task.after`),
    # beside the other seeds' steps, not after a whole wave of them
    fill = (_filler(params, methods, key, data, device, shape, env)
            if params.execution.fill_idle and not distributed.active() else None)
    tasks = _tasks(params, methods, prunes, todo, data, device, shape, env, tracker)
    failures = run_tasks(tasks, workers=workers, threads=threads, in_process=in_process,
                         on_done=_on_done(results, todo, prunes), fill=fill)
    if distributed.writer():
        _remove_stale(key, planned)
    tracking_failed = _complete_tracking(tracker, key, planned, results)
    raise_failures(f"run {key}", failures, len(planned))
    summary = distributed.rank0_first(
        lambda: write_method_metrics(key, methods[key], planned, results))
    if tracking_failed is not None:
        raise tracking_failed
    if tracker is not None:
        with profile.timed("tracking"):
            tracker.finish(summary)
    profile.record(workers=workers, trained=len(todo))
    print(f"run {key}: done in {time.perf_counter() - started:.1f}s", flush=True)
    return summary


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
              prunes: dict, workers: int, threads: int) -> None:
    print(f"run {key}: {len(planned)} runs, {len(results)} cached, {len(todo)} to train "
          f"({workers} workers x {threads} threads)" + (
              f", {len(prunes)} shared prune phase{'s' * (len(prunes) != 1)}" if prunes
              else "") + (
              f", {len(later)} later steps of progressive series" if later else ""), flush=True)


def _tasks(params: Params, methods: dict[str, MethodParams],
           prunes: dict[str, tuple[Planned, str]], todo: list[tuple[Planned, str | None]],
           data: dict, device: torch.device, shape: tuple[int, ...], env: dict[str, Any],
           tracker: RunTracker | None) -> list[Task]:
    """The shared prune trajectories first, then every run to train, each after the task it
    starts from (its previous series step, or its seed's trajectory)."""
    tasks = [_prune_task(name, q, tfp, data, device) for name, (q, tfp) in prunes.items()]
    after = {q.spec.shared_prune: name for name, (q, _) in prunes.items()}
    tasks += [_run_task(params, methods, p, fp, data, device, shape, env, tracker,
                        after=p.after.name if fp is None else after.get(p.spec.shared_prune))
              for p, fp in todo]
    return tasks


def _on_done(results: dict[str, dict], todo: list[tuple[Planned, str | None]],
             prunes: dict[str, tuple[Planned, str]]):
    """The hook `run_tasks` calls after each task that succeeded: its line, its result and
    its seconds in the profile."""
    shared = {name: q.spec.shared_prune for name, (q, _) in prunes.items()}

    def done(t: Task) -> None:
        if t.name in shared:
            record = json.loads((shared[t.name] / TRAJECTORY).read_text())
            print(f"run {t.name}: shared by its levels, in {record['seconds']['prune']:.1f}s "
                  f"(training {record['seconds']['train']:.1f}s)", flush=True)
            profile.record(train=record["seconds"]["train"])
            return
        p = next(p for p, _ in todo if p.name == t.name)
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


def _prune_task(name: str, p: Planned, fp: str, data: dict, device: torch.device) -> Task:
    """The worker's job ``name`` (`_shared_prunes`): the prune trajectory that ``p``'s seed
    shares across levels."""

    def fn() -> None:
        shared_prune(p.spec, data, device, p.spec.shared_prune, fingerprint=fp,
                     on_epoch=log_epoch(name))
    return Task(name, fn)


def _run_task(params: Params, methods: dict[str, MethodParams], p: Planned, fp: str | None,
              data: dict, device: torch.device, shape: tuple[int, ...], env: dict[str, Any],
              tracker: RunTracker | None, after: str | None = None) -> Task:
    """The worker's job for run ``p``: `execute` it (resuming its ``.work`` state), logging its
    MLflow run live; the latency is measured on the method's first seed only. ``fp`` None: a
    progressive step whose previous step (``after``) trains first; its fingerprint is taken
    when it starts, and a cached result is kept."""

    def fn() -> None:
        nonlocal fp
        if fp is None:
            fp = run_fingerprint(params, p)
            if cached(p.out, fp) is not None:
                return
        key = p.spec.key
        latency = ((tuple(params.evaluate.latency_batch_sizes), params.evaluate.latency_repeats)
                   if p.spec.seed == seeds_of(params, methods[key])[0] else None)
        work = p.out.with_name(f".{p.out.name}.work")  # the run's resume state (`execute`)
        live = (tracker.live(tracker.run_info(p, fp, env), work / RUN_STATE, p.name)
                if tracker is not None else None)
        with live_epochs(live, work) as on_epoch:
            execute(p.spec, data, device, p.out, fingerprint=fp, budget=p.budget,
                    shape=shape, env=env, on_epoch=chain_hooks(log_epoch(p.name), on_epoch),
                    latency=latency)
            if live is not None:
                live.finish(run_records(p.out))
    return Task(p.name, fn, after)


def _filler(params: Params, methods: dict[str, MethodParams], key: str, data: dict,
            device: torch.device, shape: tuple[int, ...], env: dict[str, Any]):
    """Work for a worker that ``run@<key>``'s last runs leave idle (`workers.run_tasks`): the
    next uncached run of the methods after ``key`` in params.yaml (the order DVC runs them in),
    then of those before it; the first step of a progressive series only, and a shared prune
    trajectory before the runs that finish it (`_shared_prunes`). Each is the very run
    its own stage would start, resumable, so the part trained here is not trained again there:
    the epochs before the kill are kept (`EpochCheckpoint`). It is not tracked here: its own
    stage logs its MLflow run, completed from the run's records (`StageTracker.sync`). A method
    that cannot be planned yet (a calibration missing) is skipped."""
    keys = list(methods)
    order = keys[keys.index(key) + 1:] + keys[:keys.index(key)]

    def runs():
        offered: set[str] = set()
        for other in order:
            try:
                planned = [p for p in method_runs(params, methods, other) if p.after is None]
            except (UsageError, OSError, ValueError):
                continue
            for p in planned:
                fp = run_fingerprint(params, p)
                if cached(p.out, fp) is not None:
                    continue
                if p.spec.shared_prune is None:  # each run is offered once: a generator
                    yield _run_task(params, methods, p, fp, data, device, shape, env, None)
                    continue
                for name, (q, tfp) in _shared_prunes(params, [(p, fp)]).items():
                    if name not in offered:  # its trajectory first; its levels wait for it
                        offered.add(name)
                        yield _prune_task(name, q, tfp, data, device)
                    break
                else:
                    yield _run_task(params, methods, p, fp, data, device, shape, env, None)

    found = runs()

    def fill() -> Task | None:
        task = next(found, None)
        if task is not None:
            print(f"run {key}: an idle worker starts {task.name} (resumed by its own stage)",
                  flush=True)
        return task
    return fill


def _remove_stale(key: str, planned: list[Planned]) -> None:
    """Delete run directories of levels, seeds or points no longer configured (so the stage's
    output is exactly its configuration); work directories of unfinished runs stay."""
    import shutil

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
