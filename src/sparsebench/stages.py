"""The pipeline stages that dvc.yaml calls through the CLI. Each one is thin: read its section
of params.yaml, call the library, write exactly the outputs dvc.yaml declares.

    prepare -> pretrain -> run@method -> report

A run is (method, level, seed) (`sparsebench.run`); ``run@<method>`` does every run of a method
(its levels x the seeds), each pruned, retrained and evaluated in one worker process
(`sparsebench.workers`), up to ``execution.workers`` side by side. A run's directory is cached
by its fingerprint (resolved configuration, input files, code): adding a level or changing one
method's parameters reruns only the runs it touches. A prune phase that does not read the level
(admm_l1, SAS-ADMM) is trained once per seed and finished by each level's run
(`sparsebench.run.shared_prune`). Outputs appear whole or not at all.
MLflow (`sparsebench.tracking`): each training run is an MLflow run logged live by the worker
that trains it, completed by the stage from the run's own files when the tracker missed any.
"""

from __future__ import annotations

import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsebench import distributed, profile
from sparsebench.config import Params
from sparsebench.data import (
    SYNTHETIC,
    build_splits,
    dataset_info,
    fetch_raw,
    load_splits,
    raw_checksums,
    save_splits,
    synthetic_splits,
)
from sparsebench.errors import TrackingFailed, UsageError
from sparsebench.methods import MethodParams, method_class
from sparsebench.paths import atomic_write_many, repo_root, run_dir, seed_dir
from sparsebench.resume import StageWork, fingerprint
from sparsebench.run import RESULT, TRAJECTORY, cached, environment
from sparsebench.suite import (DATA_FILE, Planned, augment_of, model_spec, plan,
                               pretrained_file, seeds_of)
from sparsebench.tracking import RUN_STATE, tracking_uri
from sparsebench.train import resolve_device
from sparsebench.workers import (
    Failure,
    Task,
    check_workers,
    default_workers,
    raise_failures,
    run_tasks,
)

if TYPE_CHECKING:
    import torch


def prepare(params: Params) -> None:
    """Obtain the raw data (checksums decide, not the source) and write the fixed splits."""
    d = params.data
    if d.dataset == SYNTHETIC:  # tests and smoke runs: no files, no network
        splits = synthetic_splits(n_train=d.limit or 256, n_val=d.val_size, n_test=d.limit or 64,
                                  shape=d.synthetic_shape, num_classes=d.synthetic_classes,
                                  seed=d.split_seed)
        source, checksums = "", {}
    else:
        raw_dir = repo_root() / ".cache" / "sparsebench" / "raw" / d.dataset
        source_dir = Path(d.dir).expanduser() if d.dir else None
        source = fetch_raw(d.dataset, raw_dir, source_dir=source_dir,
                           cache_dir=repo_root() / ".cache" / "sparsebench" / "sources")
        splits = build_splits(d.dataset, raw_dir, val_size=d.val_size, seed=d.split_seed,
                              limit=d.limit)
        checksums = raw_checksums(d.dataset, raw_dir)
    save_splits(splits, DATA_FILE, dataset=d.dataset, seed=d.split_seed, val_size=d.val_size,
                limit=d.limit, raw_sha256=checksums)
    sizes = {k[:-2]: len(v) for k, v in splits.items() if k.endswith("_y")}
    print(f"prepare: {d.dataset} {sizes} {source}".rstrip())


def _log_epoch(name: str):
    """One line per epoch (or ADMM iteration) on stdout: the figures the row has."""
    def show(phase: str, row: dict) -> None:
        if not distributed.writer():  # under torchrun: rank 0's lines alone
            return
        figures = " ".join(f"{k} {v:.4g}" for k, v in row.items()
                           if k not in ("epoch", "seconds") and isinstance(v, float))
        print(f"{phase} {name} epoch {row['epoch']}: {figures} "
              f"({row.get('seconds', 0):.2f}s)", flush=True)
    return show


def _both(*hooks):
    """One ``on_epoch(phase, row)`` calling each hook that is not None."""
    present = [h for h in hooks if h is not None]

    def call(phase: str, row: dict) -> None:
        for hook in present:
            hook(phase, row)
    return call


@contextmanager
def _live(live, work: Path):
    """Start ``live`` (a `tracking.LiveRun` or None) and yield its epoch hook; a run that
    fails ends its MLflow run FAILED (a killed one stays RUNNING, and its rerun continues it)."""
    if live is None:
        yield None
        return
    work.mkdir(parents=True, exist_ok=True)  # where the live run keeps its id for a resume
    live.start()
    try:
        yield live.epoch
    except BaseException:
        live.finish(None, status="FAILED")
        raise


def workers_of(params: Params) -> tuple[int, int, bool]:
    """(workers, threads, in_process) for this machine; warns when they exceed the cores.
    Under torchrun: one run at a time in this process, over all ranks."""
    import warnings

    device = stage_device(params)
    threads = params.execution.threads
    if distributed.active():
        return 1, threads, True
    workers = params.execution.workers or default_workers(threads, device)
    if text := check_workers(workers, threads):
        warnings.warn(text, UserWarning, stacklevel=2)
    return workers, threads, device.type != "cpu"


def stage_device(params: Params) -> torch.device:
    """The device of this stage's process: ``device``, or this rank's under torchrun (joining
    its process group; refused for a batch-norm model on the CPU, see `check_distributed`)."""
    device = resolve_device(params.device)
    if distributed.launched():
        device = distributed.setup(device)
        check_distributed(params, device)
    return device


def check_distributed(params: Params, device: torch.device) -> None:
    """What cannot train over ranks, refused in one line: a model with batch norm on the CPU
    (its statistics over the global batch need SyncBatchNorm, which PyTorch runs on CUDA
    only; per-rank statistics would make another model than the single process trains)."""
    from sparsebench.models import MODELS

    if device.type == "cpu" and params.model.name.startswith("resnet"):
        allowed = ", ".join(m for m in MODELS if not m.startswith("resnet"))
        raise UsageError(f"model.name: {params.model.name!r} has batch norm, which cannot "
                         "train under torchrun on the CPU (SyncBatchNorm is CUDA-only); "
                         f"allowed there: {allowed}, or device: cuda")


def pretrain(params: Params) -> None:
    """Dense training from a seeded initialisation, one model per seed (side by side);
    resumable. Each seed is an MLflow run of its own, logged live."""
    from sparsebench.run import ModelSpec, save_run_model
    from sparsebench.train import fit, seed_everything

    device = stage_device(params)
    data = load_splits(DATA_FILE, ("train", "val"))
    phase = params.pretrain.to_phase("pretrain")
    spec: ModelSpec = model_spec(params)
    augment = augment_of(params, DATA_FILE)
    workers, threads, in_process = workers_of(params)
    shared = params.model_dump(include={"seeds", "device", "data", "model", "pretrain"})
    shared["threads"] = threads
    env = environment(device, threads, workers)
    tracker = (_Tracker(params, "pretrain", "tags.run_kind = 'pretrain'")
               if params.tracking.enabled and distributed.writer() else None)
    if distributed.world() > 1:  # another reduction order: not the single-process models
        shared["world_size"] = distributed.world()
    if not params.execution.options().default:  # bf16 etc.: other numbers
        shared["options"] = params.execution.model_dump(
            include={"precision", "channels_last", "compile"})
    with StageWork(run_dir("pretrain"), fingerprint(stage="pretrain", config=shared,
                                                    inputs=[DATA_FILE])) as work:
        def info(seed: int):
            from sparsebench.tracking import flatten

            tags = {"method": "pretrain", "family": "dense", "level": "None", "seed": str(seed),
                    "params_source": "default", "run_kind": "pretrain",
                    "fingerprint": f"{work.fingerprint}-seed{seed}"}
            run_params = {**flatten("pretrain", params.pretrain.model_dump(mode="json")),
                          **flatten("model", params.model.model_dump(mode="json")),
                          **flatten("env", env), "seed": seed}
            return tracker.info(f"pretrain-seed{seed}", tags, run_params)

        def one(seed: int) -> None:
            from sparsebench.resume import Resume

            from sparsebench.run import diverged

            generator = seed_everything(seed)
            model = spec.build().to(device)
            resume = Resume(work.checkpoint(f"seed{seed}"), "pretrain")
            live = (tracker.live(info(seed), work.dir / f"seed{seed}.{RUN_STATE}",
                                 f"pretrain seed {seed}") if tracker is not None else None)
            with _live(live, work.dir) as on_epoch, diverged(
                    f"pretrain seed {seed}", {"pretrain.optimizer": params.pretrain.optimizer}):
                hook = _both(_log_epoch(f"seed {seed}"), on_epoch)
                curves = fit(model, data["train"], data["val"], phase, generator=generator,
                             device=device, on_epoch=lambda row: hook("pretrain", row),
                             resume=resume, augment=augment)
                done = distributed.rank0_first(lambda: work.finish(
                    f"seed{seed}", save_run_model, model, curves))
                if live is not None:
                    live.finish(pretrain_records(done))

        tasks = [Task(f"pretrain seed {s}", lambda s=s: one(s)) for s in params.seeds
                 if not work.done(f"seed{s}")]
        failures = run_tasks(tasks, workers=workers, threads=threads, in_process=in_process)
        if tracker is not None:  # inside: a failure keeps the work directory for the rerun
            with profile.timed("tracking"):
                tracker.sync([(info(s), pretrain_records(work.dir / f"seed{s}"),
                               f"pretrain seed {s}") for s in params.seeds
                              if work.done(f"seed{s}")])
        raise_failures("pretrain", failures, len(tasks))
        # not part of the stage's output; rank 0 alone (under torchrun it swaps the work
        # directory in as it leaves this block, while another rank may still be here)
        for state in work.dir.glob(f"*.{RUN_STATE}") if distributed.writer() else []:
            state.unlink()
    epochs = [row for s in params.seeds for row in json.loads(
        (seed_dir(run_dir("pretrain"), s) / "curves.json").read_text())]
    profile.record(train=sum(r["seconds"] for r in epochs), workers=workers,
                   trained=len(tasks))


def pretrain_records(seed_out: Path) -> Any:
    """A finished pretrain seed's `tracking.Records`: its curve, the last epoch's figures and
    the training seconds, dated by its curves file."""
    from sparsebench.tracking import Records

    curves = json.loads((seed_out / "curves.json").read_text())
    end = int((seed_out / "curves.json").stat().st_mtime * 1000)
    seconds = sum(r["seconds"] for r in curves)
    last = {k: v for k, v in curves[-1].items() if k not in ("epoch", "seconds", "lr")}
    return Records({"pretrain": curves}, {**last, "seconds_train": seconds}, [],
                   start_ms=end - int(1000 * seconds), end_ms=end)


def run_fingerprint(params: Params, planned: Planned) -> str:
    """What a run's cached directory is keyed by: its resolved spec, the shared sections it
    reads (device, data, evaluate), its thread count, its input files and the code that can
    change it (`resume.code_digest`). The method's own ``levels`` only choose which of the
    suite's levels it runs, so they are keyed as unset: narrowing them keeps the other
    levels' runs (a progressive step whose previous step changes has another input file)."""
    run = planned.spec.config()
    if "levels" in run["method"]:
        run["method"]["levels"] = None  # as every run was keyed before a subset was given
    config = {"run": run, **_numerics(params),
              "evaluate": params.evaluate.model_dump(mode="json"), "budget": planned.budget}
    return fingerprint(stage="run", config=config,
                       inputs=[DATA_FILE, *pretrained_file(planned.spec)])


#: what a run's method parameters hold about its level alone (and its retrain)
LEVEL_KEYS = ("target_sparsity", "layer_sparsity", "scope", "levels", "retrain")


def shared_fingerprint(params: Params, planned: Planned) -> str:
    """What a shared prune trajectory is keyed by: the run's spec without what only its level
    and retrain read, the data, device and threads, the inputs and the code."""
    run = planned.spec.config()
    run["method"] = {k: v for k, v in run["method"].items() if k not in LEVEL_KEYS}
    for key in ("level", "point", "retrain"):
        run.pop(key)
    return fingerprint(stage="shared_prune", config={"run": run, **_numerics(params)},
                       inputs=[DATA_FILE, *pretrained_file(planned.spec)])


def _numerics(params: Params) -> dict[str, Any]:
    """The settings a run's numbers depend on beside its spec."""
    config = {"device": params.device, "data": params.data.model_dump(mode="json"),
              "threads": params.execution.threads}
    if distributed.world() > 1:  # another reduction order: not the single-process runs
        config["world_size"] = distributed.world()
    if not params.execution.options().default:  # bf16 etc.: other numbers
        config["options"] = params.execution.model_dump(
            include={"precision", "channels_last", "compile"})
    return config


def method_runs(params: Params, methods: dict[str, MethodParams], key: str) -> list[Planned]:
    """The planned runs of ``methods.<key>`` (with its calibration when it needs one)."""
    calibration = None
    if method_class(key, methods[key].model_dump()).kind() == "regularised":
        from sparsebench.calibrate import read_calibration

        calibration = read_calibration(key, methods[key])
    return plan(params, methods, key, calibration)


def sweep(params: Params, methods: dict[str, MethodParams], key: str) -> dict:
    """Every run of ``methods.<key>``: cached runs are kept, the others run side by side, each
    logging its MLflow run live from its worker (under a (method, level) parent); then the runs
    the tracker lacks are completed from their files, the method's metrics files are written
    and the parents get the report's numbers."""
    from sparsebench.run import execute

    if key not in methods:
        raise UsageError(f"--method: {key!r} is not configured under methods in params.yaml; "
                         f"allowed: {', '.join(methods)}")
    started = time.perf_counter()
    device = stage_device(params)
    planned = method_runs(params, methods, key)
    workers, threads, in_process = workers_of(params)
    env = environment(device, threads, workers)
    if distributed.active():
        env.update(distributed.describe())
    shape = tuple(dataset_info(DATA_FILE)["shape"])
    todo, results, failures = [], {}, {}
    later: list[Planned] = []  # series steps whose previous step trains in this call
    for p in planned:  # plan() lists a step after the one it starts from
        if p.after is not None and p.after.name not in results:
            later.append(p)  # its fingerprint covers that step's model: known once it is done
            continue
        fp = run_fingerprint(params, p)
        found = cached(p.out, fp)
        if found is not None:
            results[p.name] = found
        else:
            todo.append((p, fp))
    prunes = _shared_prunes(params, todo)  # a series step never shares (`suite.plan`)
    # task name -> the shared prune trajectory it trains
    shared = {name: q.spec.shared_prune for name, (q, _) in prunes.items()}
    print(f"run {key}: {len(planned)} runs, {len(results)} cached, {len(todo)} to train "
          f"({workers} workers x {threads} threads)" + (
              f", {len(prunes)} shared prune phase{'s' * (len(prunes) != 1)}" if prunes
              else "") + (
              f", {len(later)} later steps of progressive series" if later else ""), flush=True)
    todo += [(p, None) for p in later]
    data = (load_splits(DATA_FILE, ("train", "val", "test")) if todo else {})
    tracker = (_RunTracker(params, key, method_class(key, methods[key].model_dump()).name,
                           planned) if params.tracking.enabled and distributed.writer() else None)

    def done(t: Task) -> None:
        if t.name in shared:
            record = json.loads((shared[t.name] / TRAJECTORY).read_text())
            print(f"run {t.name}: shared by its levels, in {record['seconds']['prune']:.1f}s "
                  f"(training {record['seconds']['train']:.1f}s)", flush=True)
            profile.record(train=record["seconds"]["train"])
            return
        p = next(p for p, _ in todo if p.name == t.name)
        results[p.name] = json.loads((p.out / RESULT).read_text())
        r = results[p.name]
        print(f"run {p.name}: test_accuracy {r['figures']['test_accuracy']:.4f} compression "
              f"{r['figures']['compression_ratio']:.2f}x in {r['seconds']['run']:.1f}s "
              f"(training {r['seconds']['train']:.1f}s)", flush=True)
        # a shared prune's epochs are the trajectory task's, counted once
        profile.record(train=r["seconds"]["train"] - r["seconds"].get("shared", 0.0),
                       evaluate=r["seconds"]["evaluate"])

    # one call: a series step starts as soon as its own previous step is done (`Task.after`),
    # beside the other seeds' steps, not after a whole wave of them
    fill = (_filler(params, methods, key, data, device, shape, env)
            if params.execution.fill_idle and not distributed.active() else None)
    tasks = [_prune_task(name, q, tfp, data, device) for name, (q, tfp) in prunes.items()]
    after = {trajectory: name for name, trajectory in shared.items()}
    tasks += [_run_task(params, methods, p, fp, data, device, shape, env, tracker,
                        after=p.after.name if fp is None else after.get(p.spec.shared_prune))
              for p, fp in todo]
    failures.update(run_tasks(tasks, workers=workers, threads=threads, on_done=done,
                              in_process=in_process, fill=fill))
    if distributed.writer():
        _remove_stale(key, planned)
    tracking_failed: TrackingFailed | None = None
    if tracker is not None:  # complete what the server lacks, from the runs' own records
        finished = [(tracker.run_info(p, results[p.name]["fingerprint"],
                                      results[p.name]["environment"]), run_records(p.out),
                     p.name) for p in planned if p.name in results]
        try:
            with profile.timed("tracking"):
                if written := tracker.sync(finished):
                    print(f"run {key}: tracking: {written} runs completed from their records",
                          flush=True)
        except TrackingFailed as exc:  # reported once the method's files are written
            tracking_failed = exc
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
    from sparsebench.run import shared_prune

    def fn() -> None:
        shared_prune(p.spec, data, device, p.spec.shared_prune, fingerprint=fp,
                     on_epoch=_log_epoch(name))
    return Task(name, fn)


def _run_task(params: Params, methods: dict[str, MethodParams], p: Planned, fp: str | None,
              data: dict, device: torch.device, shape: tuple[int, ...], env: dict[str, Any],
              tracker: _RunTracker | None, after: str | None = None) -> Task:
    """The worker's job for run ``p``: `execute` it (resuming its ``.work`` state), logging its
    MLflow run live; the latency is measured on the method's first seed only. ``fp`` None: a
    progressive step whose previous step (``after``) trains first; its fingerprint is taken
    when it starts, and a cached result is kept."""
    from sparsebench.run import execute

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
        with _live(live, work) as on_epoch:
            execute(p.spec, data, device, p.out, fingerprint=fp, budget=p.budget,
                    shape=shape, env=env, on_epoch=_both(_log_epoch(p.name), on_epoch),
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
    stage logs its MLflow run, completed from the run's records (`_Tracker.sync`). A method
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


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean_std(figures: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std over runs of every number any of them has (latency: one seed)."""
    keys = sorted({k for f in figures for k, v in f.items() if isinstance(v, (int, float))})
    return ({k: statistics.fmean(f[k] for f in figures if k in f) for k in keys},
            {k: _std([f[k] for f in figures if k in f]) for k in keys})


def metric_column(level: str) -> str:
    """A level's name as a column of ``dvc metrics show``, which orders its columns as text: the
    compression padded to three digits (c008 < c016 < c128, c71.2 -> c071.2); dense as it is."""
    if not level.startswith("c"):
        return level
    whole, dot, fraction = level[1:].partition(".")
    return f"c{whole:0>3}{dot}{fraction}"


def write_method_metrics(key: str, method: MethodParams, planned: list[Planned],
                         results: dict[str, dict]) -> dict:
    """``evaluation/<key>.json`` (the mean and std per level, every run's figures and layers)
    and ``metrics/<key>.json`` (the mean test accuracy per measured level alone: one row of
    ``dvc metrics show``), each whole (`atomic_write_many`)."""
    by_level: dict[str, list[dict]] = {}
    for p in planned:
        by_level.setdefault(p.out.parent.name, []).append(results[p.name])
    summary: dict[str, Any] = {"method": method_class(key, method.model_dump()).name,
                               "params": params_source(key), "levels": {}}
    for name, runs in by_level.items():
        figures = [r["figures"] for r in runs if not r["point"]]
        entry: dict[str, Any] = {"level": runs[0]["level"], "epochs": runs[0]["epochs"],
                                 "seeds": len({r["seed"] for r in runs})}
        if figures:
            entry["mean"], entry["std"] = mean_std(figures)
            for part in ("train", "run"):
                values = [r["seconds"][part] for r in runs]
                entry["mean"][f"{part}_seconds"] = statistics.fmean(values)
                entry["std"][f"{part}_seconds"] = _std(values)
        else:
            entry["interpolated"] = True
        summary["levels"][name] = entry
    details = {**summary, "runs": [{k: v for k, v in results[p.name].items()
                                    if k != "fingerprint"} for p in planned]}
    accuracy = {metric_column(name): entry["mean"]["test_accuracy"]
                for name, entry in summary["levels"].items() if "mean" in entry}
    atomic_write_many({Path("evaluation", f"{key}.json"): json.dumps(details, indent=1),
                       Path("metrics", f"{key}.json"): json.dumps(accuracy, indent=1)})
    return summary


def params_source(key: str) -> dict[str, Any]:
    """Whether ``methods.<key>`` ran with tuned parameters (``tuned/<key>.yaml``), calibrated
    strengths (``calibrated/<key>.yaml``) or the hand-set ones."""
    from sparsebench.calibrate import calibrated_path
    from sparsebench.tuned import read_tuned

    tuned = read_tuned(key)
    info: dict[str, Any] = {"source": "default"}
    if tuned is not None:
        info = {"source": "tuned", "study": tuned.study, "trials": tuned.finished_trials,
                "values": tuned.params, "val_accuracy": tuned.best.val_accuracy,
                "val_sparsity": tuned.best.sparsity}
        if tuned.handset is not None:
            info["handset_val_accuracy"] = tuned.handset.val_accuracy
            info["handset_val_sparsity"] = tuned.handset.sparsity
    if calibrated_path(key).exists():
        info["calibrated"] = str(calibrated_path(key))
    return info


class _Tracker:
    """The MLflow side of a training stage, in the stage's process.

    Before the runs start: the experiment, the (method, level) parents (found by their tags or
    created, under the store's lock) and each run's `RunInfo`, which the worker that trains the
    run opens live (`tracking.LiveRun`). Once training is done: `sync` completes from their
    records the runs the server lacks (cached, or cut short), then `finish` gives the parents
    the report's numbers. Every failure of the tracker there is one line (`TrackingFailed`).
    """

    def __init__(self, params: Params, stage: str, kind_filter: str):
        from sparsebench.data import SYNTHETIC
        from sparsebench.resume import code_digest
        from sparsebench.tracking import (
            client_for,
            dataset_input,
            find_runs,
            git_commit,
            tracking_uri,
        )

        self.params, self.stage = params, stage
        self.uri = tracking_uri(params.tracking.uri)
        self.experiment = params.tracking.experiment or f"sparsebench-{params.suite}"
        self.client, self.experiment_id = client_for(self.uri, self.experiment)
        self.common = {"suite": params.suite, "git_commit": git_commit(),
                       "code_digest": code_digest(), "dvc_stage": stage}
        info = dataset_info(DATA_FILE)
        d = params.data
        origin = ("synthetic (generated by sparsebench.data.synthetic_splits)"
                  if info["dataset"] == SYNTHETIC else
                  f"data.dir {d.dir}" if d.dir else
                  "sparsebench.data.fetch_raw: torchvision's download, else the offline "
                  "package; raw files verified by their SHA-256 (raw_sha256)")
        self.dataset = dataset_input(DATA_FILE, info, origin)
        self.filter = f"tags.suite = '{params.suite}' and {kind_filter}"
        with self.guard():
            self.runs = find_runs(self.client, self.experiment_id, self.filter)
        if self.uri.startswith(("http:", "https:")):
            print(f"{stage}: tracking at {self.uri}/#/experiments/{self.experiment_id}",
                  flush=True)

    def guard(self, what: str = ""):
        """A tracker failure in here is one line (`TrackingFailed`)."""
        from sparsebench.tracking import logged

        local = f"runs/{self.stage.removeprefix('run@')}"
        return logged(what or f"the runs of {self.stage}", self.uri, local)

    def info(self, name: str, tags: dict[str, str], params: dict[str, Any]):
        from sparsebench.tracking import RunInfo

        return RunInfo(self.uri, self.experiment_id, name, {**self.common, **tags}, params,
                       self.dataset)

    def live(self, info, state: Path, label: str):
        """The run's `LiveRun` (started in the worker; its id kept in ``state``), or None
        when the run is logged whole already."""
        from sparsebench.tracking import FINISHED, LiveRun

        found = self.runs.get(info.fingerprint)
        if found is not None and found.info.status == FINISHED:
            return None
        return LiveRun(info, state, label)

    def sync(self, finished: list[tuple[Any, Any, str]]) -> int:
        """Complete each finished (info, records, label) the server lacks; how many were."""
        from sparsebench.tracking import find_runs, sync_run

        if not finished:
            return 0
        with self.guard():
            runs = find_runs(self.client, self.experiment_id, self.filter)
        written = 0
        for info, records, label in finished:
            with self.guard(f"run {label}"):
                written += sync_run(self.client, info, records,
                                    runs.get(info.fingerprint)) is not None
        return written


class _RunTracker(_Tracker):
    """`_Tracker` for ``run@<key>``: one run per (method, level, seed) under a parent per
    (method, level) that holds the report's numbers."""

    def __init__(self, params: Params, key: str, family: str, planned: list[Planned]):
        super().__init__(params, f"run@{key}", f"tags.method_key = '{key}'")
        self.key, self.family = key, family
        self.source = _source_tag(params_source(key))
        with self.guard():
            self._parents(key, planned)

    def _parents(self, key: str, planned: list[Planned]) -> None:
        from filelock import FileLock

        self.parents = {r.data.tags["level_name"]: r for r in self.client.search_runs(
            [self.experiment_id], f"{self.filter} and tags.run_kind = 'parent'",
            max_results=1000)}
        levels = {p.out.parent.name: p.spec.level for p in planned}
        missing = [name for name in levels if name not in self.parents]
        if missing:
            with FileLock(repo_root() / "mlruns" / ".lock"):  # parallel stages make one each
                self.parents.update({r.data.tags["level_name"]: r for r in self.client.search_runs(
                    [self.experiment_id], f"{self.filter} and tags.run_kind = 'parent'",
                    max_results=1000)})
                for name in (n for n in missing if n not in self.parents):
                    run = self.client.create_run(
                        self.experiment_id, run_name=f"{key}-{name}",
                        tags={**self.common, **self._tags(name, levels[name]),
                              "run_kind": "parent"})
                    self.parents[name] = run

    def _tags(self, level_name: str, level: float | None) -> dict[str, str]:
        return {"method": self.key, "method_key": self.key, "family": self.family,
                "level": str(level), "level_name": level_name, "params_source": self.source}

    def run_info(self, p: Planned, fp: str, env: dict[str, Any]):
        from sparsebench.tracking import flatten

        level_name = p.out.parent.name
        tags = {**self._tags(level_name, p.spec.level), "seed": str(p.spec.seed),
                "point": p.spec.point, "fingerprint": fp, "run_kind": "seed",
                "mlflow.parentRunId": self.parents[level_name].info.run_id}
        run_params = {**flatten("method", p.spec.method.model_dump(mode="json")),
                      **flatten("epochs", p.budget), **flatten("env", env),
                      "seed": p.spec.seed}
        point = f"-{p.spec.point}" if p.spec.point else ""
        name = f"{self.key}-{level_name}-seed{p.spec.seed}{point}"
        return self.info(name, tags, run_params)

    def finish(self, summary: dict) -> None:
        """The parents' metrics: the report's numbers per level (mean and std over seeds of
        test accuracy, sparsity, compression, FLOP speedup, train seconds, every figure);
        a value already there is not sent again."""
        from mlflow.entities import Metric

        from sparsebench.tracking import FINISHED, log_batches, logged, now_ms

        aliases = {"compression_ratio": "compression", "theoretical_speedup": "flop_speedup"}
        for name, entry in summary["levels"].items():
            parent = self.parents.get(name)
            if parent is None:
                continue
            values: dict[str, float] = {}
            for stat in ("mean", "std"):
                for k, v in entry.get(stat, {}).items():
                    values[f"{k}_{stat}"] = v
                    if k in aliases:
                        values[f"{aliases[k]}_{stat}"] = v
            stamp = now_ms()
            with logged(f"the parent run {self.key}-{name}", self.uri, "evaluation/"):
                current = self.client.get_run(parent.info.run_id)
                metrics = [Metric(k, float(v), stamp, 0) for k, v in values.items()
                           if current.data.metrics.get(k) != float(v)]
                log_batches(self.client, parent.info.run_id, metrics, [])
                if metrics or current.info.status != FINISHED:
                    self.client.set_terminated(parent.info.run_id, status=FINISHED)


def _source_tag(info: dict[str, Any]) -> str:
    """``default``, ``tuned``, ``calibrated`` or ``tuned+calibrated`` (`params_source`)."""
    if "calibrated" not in info:
        return info["source"]
    return "calibrated" if info["source"] == "default" else f"{info['source']}+calibrated"


def run_records(out: Path) -> Any:
    """A finished run's `tracking.Records` from its directory: curves, figures, seconds and
    per-layer sparsity from ``result.json``, masks and compressed checkpoint; dated by the
    result file (written at the end of evaluation) and the run's wall seconds."""
    from sparsebench.run import CHECKPOINT, CURVES, MASKS
    from sparsebench.tracking import Records

    result = json.loads((out / RESULT).read_text())
    end = int((out / RESULT).stat().st_mtime * 1000)
    return Records(json.loads((out / CURVES).read_text()), final_metrics(result),
                   [(out / MASKS, "masks"), (out / CHECKPOINT, "model")],
                   start_ms=end - int(1000 * result["seconds"]["run"]), end_ms=end)


def final_metrics(result: dict) -> dict[str, float]:
    """A run's final figures as MLflow metrics: figures, ``seconds_<part>``,
    ``layer_sparsity/<layer>``."""
    metrics = {k: v for k, v in result["figures"].items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics.update({f"seconds_{k}": v for k, v in result["seconds"].items()})
    metrics.update({f"layer_sparsity/{n}": v["sparsity"] for n, v in result["layers"].items()})
    return metrics


def load_results(methods: dict[str, Any]) -> dict[str, dict]:
    """Summary and details of every configured method's runs, by method key."""
    results = {}
    for key in methods:
        path = Path("evaluation", f"{key}.json")
        if not path.exists():
            raise UsageError(f"input: {str(path)!r} does not exist; run run@{key} first")
        results[key] = json.loads(path.read_text())
    return results



def _row(key: str, run: dict, level: float | None) -> dict[str, Any]:
    f = run["figures"]
    return {"method": key, "level": level or 1.0,
            "level_sparsity": 0.0 if level is None else 1.0 - 1.0 / level,
            "seed": run["seed"], "test_accuracy": f["test_accuracy"], "sparsity": f["sparsity"],
            "compression": f["compression_ratio"], "flop_speedup": f["theoretical_speedup"],
            "epochs": run["epochs"]["total"], "train_seconds": run["seconds"]["train"],
            "interpolated": False, "checkpoint_bytes": f["checkpoint_bytes"],
            "family": run["method"], "progressive": bool(run["params"].get("progressive"))}


def _interpolated(key: str, low: dict, high: dict, level: float) -> dict[str, Any]:
    """A bracketed level's row for one seed: every figure linear in log2(compression) between
    the two measured runs (`sparsebench.calibrate`), marked interpolated."""
    import math

    from sparsebench.calibrate import MAX_COMPRESSION

    a, b = _row(key, low, level), _row(key, high, level)
    x0, x1 = (math.log2(min(r["compression"], MAX_COMPRESSION)) for r in (a, b))
    t = (math.log2(level) - x0) / (x1 - x0) if x1 != x0 else 0.5
    row = dict(a)
    for field in ("test_accuracy", "checkpoint_bytes"):
        row[field] = a[field] + t * (b[field] - a[field])
    # FLOP speedup in proportion to compression from the lower point (the upper one may be an
    # all-zero model, whose speedup is infinite)
    row["flop_speedup"] = a["flop_speedup"] * level / a["compression"]
    row.update(compression=level, sparsity=1.0 - 1.0 / level, interpolated=True,
               train_seconds=(a["train_seconds"] + b["train_seconds"]) / 2)
    return row


def curve_rows(results: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (method, level, seed) from the methods' evaluation files: measured runs as
    they are, bracketed levels interpolated between their two runs."""
    rows = []
    for key, result in results.items():
        brackets: dict[tuple, dict[str, dict]] = {}
        for run in result["runs"]:
            if run["point"]:
                brackets.setdefault((run["level"], run["seed"]), {})[run["point"]] = run
            else:
                rows.append(_row(key, run, run["level"]))
        for (level, _), pair in sorted(brackets.items()):
            rows.append(_interpolated(key, pair["low"], pair["high"], level))
    return rows


def report(params: Params, methods: dict[str, MethodParams]) -> None:
    """The curves, the per-level tables and the ranking of every configured method."""
    from sparsebench.curves_report import write_curves_report

    results = load_results(methods)
    rows = curve_rows(results)
    files = write_curves_report(rows, Path("reports"), suite=params.suite, budget=params.budget)
    print(Path("reports/curves.md").read_text())
    if params.tracking.enabled:
        _log_report(params, methods, files)
        _publish_models(params, methods, rows, tracking_uri(params.tracking.uri),
                        params.tracking.experiment or f"sparsebench-{params.suite}")


def _log_report(params: Params, methods: dict[str, MethodParams], files: list[Path]) -> None:
    """One ``report`` run per distinct report (its files' digest as the fingerprint tag): a
    report made again with the same numbers is not logged twice."""
    import hashlib

    from sparsebench.resume import code_digest
    from sparsebench.tracking import (
        FINISHED,
        client_for,
        find_runs,
        log_run,
        logged,
        tracking_uri,
    )

    experiment = params.tracking.experiment or f"sparsebench-{params.suite}"
    uri = tracking_uri(params.tracking.uri)
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"")
    fp = digest.hexdigest()
    with logged("the report", uri, "reports/"):
        client, experiment_id = client_for(uri, experiment)
        found = find_runs(client, experiment_id, f"tags.dvc_stage = 'report' and "
                          f"tags.fingerprint = '{fp}'").get(fp)
        if found is not None and found.info.status == FINISHED:
            return
        log_run(uri, experiment, run_name="report",
                tags={"suite": params.suite, "dvc_stage": "report", "method": "report",
                      "fingerprint": fp, "code_digest": code_digest()},
                params={"methods": ",".join(methods), "seeds": params.seeds},
                metrics={}, curves={}, artifacts=[(path, "report") for path in files])


def _publish_models(params: Params, methods: dict[str, MethodParams], rows: list[dict],
                    uri: str, experiment: str) -> None:
    """Every run's model as an MLflow LoggedModel, the best per level registered
    (`sparsebench.mlflow_model`)."""
    from sparsebench.mlflow_model import publish_models
    from sparsebench.tracking import logged

    run_dirs = [p.out for key in methods for p in method_runs(params, methods, key)]
    with logged("the models", uri, "runs/"), profile.timed("tracking"):
        out = publish_models(uri, experiment, params.suite, rows, run_dirs, DATA_FILE)
    print(f"report: {out['logged']} models logged to MLflow "
          f"({out['seconds_per_model']:.2f}s each); registered: "
          f"{', '.join(f'{n} v{v}' for n, v, _ in out['registered']) or 'none'}", flush=True)
    if out["missing_runs"]:
        print(f"report: {len(out['missing_runs'])} runs have no MLflow run, so no model "
              f"(tracking was off when they ran): {', '.join(out['missing_runs'][:5])}",
              flush=True)
