"""The pipeline stages that dvc.yaml calls through the CLI. Each one is thin: read its section
of params.yaml, call the library, write exactly the outputs dvc.yaml declares.

    prepare -> pretrain -> run@method -> report

A run is (method, level, seed) (`sparsebench.run`); ``run@<method>`` does every run of a method
(its levels x the seeds), each pruned, retrained and evaluated in one worker process
(`sparsebench.workers`), up to ``execution.workers`` side by side. A run's directory is cached
by its fingerprint (resolved configuration, input files, code): adding a level or changing one
method's parameters reruns only the runs it touches. Outputs appear whole or not at all.
"""

from __future__ import annotations

import json
import statistics
import time
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
from sparsebench.run import RESULT, cached, environment
from sparsebench.suite import DATA_FILE, Planned, model_spec, plan, pretrained_file
from sparsebench.train import resolve_device
from sparsebench.workers import Task, check_workers, default_workers, raise_failures, run_tasks

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
    resumable."""
    from sparsebench.run import ModelSpec, save_run_model
    from sparsebench.train import fit, seed_everything

    device = stage_device(params)
    data = load_splits(DATA_FILE, ("train", "val"))
    phase = params.pretrain.to_phase("pretrain")
    spec: ModelSpec = model_spec(params)
    workers, threads, in_process = workers_of(params)
    shared = params.model_dump(include={"seeds", "device", "data", "model", "pretrain"})
    shared["threads"] = threads
    if distributed.world() > 1:  # another reduction order: not the single-process models
        shared["world_size"] = distributed.world()
    if not params.execution.options().default:  # bf16 etc.: other numbers
        shared["options"] = params.execution.model_dump(
            include={"precision", "channels_last", "compile"})
    with StageWork(run_dir("pretrain"), fingerprint(stage="pretrain", config=shared,
                                                    inputs=[DATA_FILE])) as work:
        def one(seed: int) -> None:
            from sparsebench.resume import Resume

            from sparsebench.run import diverged

            generator = seed_everything(seed)
            model = spec.build().to(device)
            resume = Resume(work.checkpoint(f"seed{seed}"), "pretrain")
            with diverged(f"pretrain seed {seed}", {"pretrain.optimizer":
                                                    params.pretrain.optimizer}):
                curves = fit(model, data["train"], data["val"], phase, generator=generator,
                             device=device, on_epoch=lambda row: _log_epoch(f"seed {seed}")(
                                 "pretrain", row), resume=resume)
            distributed.rank0_first(lambda: work.finish(f"seed{seed}", save_run_model, model,
                                                        curves))

        tasks = [Task(f"pretrain seed {s}", lambda s=s: one(s)) for s in params.seeds
                 if not work.done(f"seed{s}")]
        failures = run_tasks(tasks, workers=workers, threads=threads, in_process=in_process)
        raise_failures("pretrain", failures, len(tasks))
    epochs = [row for s in params.seeds for row in json.loads(
        (seed_dir(run_dir("pretrain"), s) / "curves.json").read_text())]
    profile.record(train=sum(r["seconds"] for r in epochs), workers=workers,
                   trained=len(tasks))


def run_fingerprint(params: Params, planned: Planned) -> str:
    """What a run's cached directory is keyed by: its resolved spec, the shared sections it
    reads (device, data, evaluate), its thread count, its input files and the code that can
    change it (`resume.code_digest`)."""
    config = {"run": planned.spec.config(), "device": params.device,
              "data": params.data.model_dump(mode="json"),
              "evaluate": params.evaluate.model_dump(mode="json"),
              "threads": params.execution.threads, "budget": planned.budget}
    if distributed.world() > 1:  # another reduction order: not the single-process runs
        config["world_size"] = distributed.world()
    if not params.execution.options().default:  # bf16 etc.: other numbers
        config["options"] = params.execution.model_dump(
            include={"precision", "channels_last", "compile"})
    return fingerprint(stage="run", config=config,
                       inputs=[DATA_FILE, *pretrained_file(planned.spec)])


def method_runs(params: Params, methods: dict[str, MethodParams], key: str) -> list[Planned]:
    """The planned runs of ``methods.<key>`` (with its calibration when it needs one)."""
    calibration = None
    if method_class(key, methods[key].model_dump()).kind() == "regularised":
        from sparsebench.calibrate import read_calibration

        calibration = read_calibration(key, methods[key])
    return plan(params, methods, key, calibration)


def sweep(params: Params, methods: dict[str, MethodParams], key: str) -> dict:
    """Every run of ``methods.<key>``: cached runs are kept, the others run side by side; then
    the method's metrics files, and one MLflow run per (level, seed) under a (method, level)
    parent."""
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
    todo, results = [], {}
    for p in planned:
        fp = run_fingerprint(params, p)
        found = cached(p.out, fp)
        if found is not None:
            results[p.name] = found
        else:
            todo.append((p, fp))
    print(f"run {key}: {len(planned)} runs, {len(results)} cached, {len(todo)} to train "
          f"({workers} workers x {threads} threads)", flush=True)
    data = load_splits(DATA_FILE, ("train", "val", "test")) if todo else {}
    tracker = _tracker(params, key) if params.tracking.enabled and distributed.writer() else None

    def task(p: Planned, fp: str) -> Task:
        def fn() -> None:
            latency = ((tuple(params.evaluate.latency_batch_sizes),
                        params.evaluate.latency_repeats)
                       if p.spec.seed == params.seeds[0] else None)
            execute(p.spec, data, device, p.out, fingerprint=fp, budget=p.budget, shape=shape,
                    env=env, on_epoch=_log_epoch(p.name), latency=latency)
        return Task(p.name, fn)

    def done(t: Task) -> None:
        p = next(p for p, _ in todo if p.name == t.name)
        results[p.name] = json.loads((p.out / RESULT).read_text())
        r = results[p.name]
        print(f"run {p.name}: test_accuracy {r['figures']['test_accuracy']:.4f} compression "
              f"{r['figures']['compression_ratio']:.2f}x in {r['seconds']['run']:.1f}s "
              f"(training {r['seconds']['train']:.1f}s)", flush=True)
        nonlocal tracker, tracking_failed
        profile.record(train=r["seconds"]["train"], evaluate=r["seconds"]["evaluate"])
        if tracker is not None:
            try:
                with profile.timed("tracking"):
                    tracker.log(p, r)
            except TrackingFailed as exc:  # the runs go on; reported once they are on disk
                tracker, tracking_failed = None, exc

    tracking_failed: TrackingFailed | None = None
    failures = run_tasks([task(p, fp) for p, fp in todo], workers=workers, threads=threads,
                         on_done=done, in_process=in_process)
    if distributed.writer():
        _remove_stale(key, planned)
    raise_failures(f"run {key}", failures, len(planned))
    summary = distributed.rank0_first(
        lambda: write_method_metrics(key, methods[key], planned, results))
    if tracking_failed is not None:
        raise tracking_failed
    if tracker is not None:
        with profile.timed("tracking"):
            tracker.finish(results)
    profile.record(workers=workers, trained=len(todo))
    print(f"run {key}: done in {time.perf_counter() - started:.1f}s", flush=True)
    return summary


def _remove_stale(key: str, planned: list[Planned]) -> None:
    """Delete run directories of levels, seeds or points no longer configured (so the stage's
    output is exactly its configuration); work directories of unfinished runs stay."""
    import shutil

    keep = {p.out.resolve() for p in planned}
    levels = {p.out.parent.resolve() for p in planned}
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
    """One MLflow run per (method, level, seed), nested under a (method, level) parent that
    holds the mean and std over seeds; a run already logged (same fingerprint) is not again."""

    def __init__(self, params: Params, key: str):
        from sparsebench.tracking import client_for, tracking_uri

        self.params, self.key = params, key
        self.uri = tracking_uri(params.tracking.uri)
        self.experiment = params.tracking.experiment or f"sparsebench-{params.suite}"
        self.client, self.experiment_id = client_for(self.uri, self.experiment)
        self.parents: dict[str, str] = {}
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.method_key = '{key}' and tags.suite = "
            f"'{params.suite}'", max_results=5000)
        self.logged = {r.data.tags.get("fingerprint") for r in runs}
        for r in runs:
            if r.data.tags.get("run_kind") == "parent":
                self.parents[r.data.tags["level_name"]] = r.info.run_id

    def _parent(self, level_name: str, level: float | None, method: str) -> str:
        if level_name not in self.parents:
            tags = {"method": method, "method_key": self.key, "suite": self.params.suite,
                    "level_name": level_name, "level": str(level), "run_kind": "parent"}
            run = self.client.create_run(self.experiment_id, tags=tags,
                                         run_name=f"{self.key}-{level_name}")
            self.parents[level_name] = run.info.run_id
        return self.parents[level_name]

    def log(self, p: Planned, result: dict) -> None:
        from sparsebench.tracking import flatten, log_run, logged

        fp = result["fingerprint"]
        if fp in self.logged:
            return
        level_name = p.out.parent.name
        parent = self._parent(level_name, result["level"], result["method"])
        curves = json.loads((p.out / "curves.json").read_text())
        tags = {"mlflow.parentRunId": parent, "method": result["method"],
                "method_key": self.key, "suite": self.params.suite, "seed": str(p.spec.seed),
                "level": str(result["level"]), "level_name": level_name,
                "point": p.spec.point, "dvc_stage": f"run@{self.key}",
                "params_source": params_source(self.key)["source"], "fingerprint": fp,
                "run_kind": "seed"}
        metrics = {k: v for k, v in result["figures"].items() if isinstance(v, (int, float))}
        metrics.update({f"seconds_{k}": v for k, v in result["seconds"].items()})
        metrics.update({f"layer_sparsity/{n}": v["sparsity"]
                        for n, v in result["layers"].items()})
        run_params = {**flatten("method", result["params"]), **flatten("epochs", result["epochs"]),
                      **flatten("env", result["environment"]), "seed": p.spec.seed}
        with logged(f"run {p.name}", self.uri, str(p.out)):
            log_run(self.uri, self.experiment, run_name=f"{self.key}-{level_name}-seed"
                    f"{p.spec.seed}{'-' + p.spec.point if p.spec.point else ''}", tags=tags,
                    params=run_params, metrics=metrics, curves=curves,
                    artifacts=[(p.out / "masks.safetensors", "masks"),
                               (p.out / "model.sparse.safetensors", "model")])
        self.logged.add(fp)

    def finish(self, results: dict[str, dict]) -> None:
        """The parents' metrics: mean and std over seeds of every figure."""
        from mlflow.entities import Metric

        from sparsebench.tracking import log_batches

        groups: dict[str, list[dict]] = {}
        for r in results.values():
            if not r["point"]:
                groups.setdefault(_level_label(r["level"]), []).append(r)
        now = int(time.time() * 1000)
        for name, runs in groups.items():
            parent = self._parent(name, runs[0]["level"], runs[0]["method"])
            mean, std = mean_std([r["figures"] for r in runs])
            metrics = [Metric(f"{k}_mean", v, now, 0) for k, v in mean.items()]
            metrics += [Metric(f"{k}_std", v, now, 0) for k, v in std.items()]
            log_batches(self.client, parent, metrics, [])
            self.client.set_terminated(parent, status="FINISHED")


def _level_label(level: float | None) -> str:
    from sparsebench.levels import level_name

    return "dense" if level is None else level_name(level)


def _tracker(params: Params, key: str) -> _Tracker:
    return _Tracker(params, key)


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
            "family": run["method"]}


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
        from sparsebench.tracking import log_run, logged, tracking_uri

        experiment = params.tracking.experiment or f"sparsebench-{params.suite}"
        uri = tracking_uri(params.tracking.uri)
        with logged("the report", uri, "reports/"):
            log_run(uri, experiment, run_name="report",
                    tags={"suite": params.suite, "dvc_stage": "report", "method": "report"},
                    params={"methods": ",".join(methods), "seeds": params.seeds},
                    metrics={}, curves={}, artifacts=[(path, "report") for path in files])
