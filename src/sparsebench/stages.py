"""The pipeline stages that dvc.yaml calls through the CLI. Each one is thin: read its section
of params.yaml, call the library, write exactly the outputs dvc.yaml declares.

    prepare -> pretrain -> prune@method -> retrain@method -> evaluate@method -> report

Seeds loop inside a stage (a process costs seconds of imports). Outputs of a stage appear whole
or not at all (`paths.atomic_dir`), so a failed stage leaves the previous ones as they were.
"""

from __future__ import annotations

import json
import statistics
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from sparsebench.checkpoint import load_model, save_model
from sparsebench.config import EvaluateParams, Params, PhaseParams
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
from sparsebench.errors import Diverged, UsageError
from sparsebench.methods import Context, MethodParams, build_method
from sparsebench.methods.retrain import masked_retrain
from sparsebench.metrics import evaluate_model_metrics
from sparsebench.models import build_model
from sparsebench.paths import atomic_dir, atomic_write_many, repo_root, run_dir, seed_dir
from sparsebench.resume import EpochCheckpoint, Resume, StageWork, fingerprint
from sparsebench.sparsity import apply_masks, get_masks, load_masks, make_permanent, save_masks
from sparsebench.tracking import flatten
from sparsebench.train import evaluate, fit, resolve_device, seed_everything

DATA_FILE = Path("data", "prepared", "splits.safetensors")
MODEL, MASKS, CURVES = "model.safetensors", "masks.safetensors", "curves.json"
CHECKPOINT = "model.sparse.safetensors"  # the compressed sparse checkpoint (sparsebench.checkpoint)


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


def fresh_model(params: Params) -> torch.nn.Module:
    """The suite's model, freshly initialised from the current seed, shaped for its data."""
    info = dataset_info(DATA_FILE)
    shape = info["shape"]
    return build_model(params.model.name, in_channels=shape[0], image_size=shape[1],
                       num_classes=info["num_classes"], **params.model.args)


def _log_epoch(stage: str, seed: int):
    """One line per epoch (or ADMM iteration) on stdout: the figures the row has."""
    def show(row: dict) -> None:
        figures = " ".join(f"{k} {v:.4g}" for k, v in row.items()
                           if k not in ("epoch", "seconds") and isinstance(v, float))
        print(f"{stage} seed {seed} epoch {row['epoch']}: {figures} "
              f"({row.get('seconds', 0):.1f}s)", flush=True)
    return show


def _work(target: Path, stage: str, params: Params, inputs: list[Path], **config: Any
          ) -> StageWork:
    """The resumable work directory of a training stage (`sparsebench.resume`): its
    fingerprint covers the shared sections it reads, ``config`` and the input files."""
    shared = params.model_dump(include={"seeds", "device", "data", "model", "pretrain"})
    return StageWork(target, fingerprint(stage=stage, config={**shared, **config},
                                         inputs=[DATA_FILE, *inputs]))


@contextmanager
def _diverged(stage: str, seed: int, hyper: dict[str, BaseModel]):
    """A NaN or infinite loss becomes one line: the stage, method, epoch and hyperparameters."""
    try:
        yield
    except FloatingPointError as exc:
        dumped = {k: v.model_dump(exclude={"retrain", "method"}) for k, v in hyper.items()}
        values = ", ".join(f"{k}={v}" for k, v in flatten("", dumped).items())
        raise Diverged(f"{stage} seed {seed}: diverged ({exc}); hyperparameters: {values}; "
                       "lower the learning rate or change them") from None


def pretrain(params: Params) -> None:
    """Dense training from a seeded initialisation, one model per seed; resumable."""
    device = resolve_device(params.device)
    data = load_splits(DATA_FILE, ("train", "val"))
    phase = params.pretrain.to_phase("pretrain")
    with _work(run_dir("pretrain"), "pretrain", params, []) as work:
        for seed in params.seeds:
            if work.done(f"seed{seed}"):
                continue
            generator = seed_everything(seed)
            model = fresh_model(params).to(device)
            resume = Resume(work.checkpoint(f"seed{seed}"), "pretrain")
            with _diverged("pretrain", seed, {"pretrain.optimizer": params.pretrain.optimizer}):
                curves = fit(model, data["train"], data["val"], phase, generator=generator,
                             device=device, on_epoch=_log_epoch("pretrain", seed),
                             resume=resume)
            work.finish(f"seed{seed}", _save, model, curves)


def _save(path: Path, model: torch.nn.Module, curves: list[dict]) -> None:
    """Write a seed's model (masks folded in), masks and curves."""
    path.mkdir(parents=True)
    save_masks(get_masks(model), path / MASKS)
    make_permanent(model)
    save_model(model, path / MODEL)
    (path / CURVES).write_text(json.dumps(curves, indent=1))


def load_run_model(path: Path, device: torch.device, *,
                   masked: bool = True) -> torch.nn.Module:
    """The model a stage wrote under ``path`` (with its masks applied when ``masked``)."""
    if not (path / MODEL).exists():
        raise UsageError(f"input: {str(path / MODEL)!r} does not exist; run the stage before "
                         "this one first (dvc repro)")
    model, _ = load_model(path / MODEL, device)
    if masked and (path / MASKS).exists():
        apply_masks(model, load_masks(path / MASKS))
    return model


def _context(data: dict, device: torch.device, seed: int, stage: str,
             checkpoint: EpochCheckpoint | None = None) -> Context:
    return Context(train=data["train"], val=data["val"], device=device,
                   generator=seed_everything(seed), seed=seed,
                   on_epoch=_log_epoch(stage, seed), checkpoint=checkpoint)


def prune(params: Params, methods: dict[str, MethodParams], key: str) -> None:
    """The prune phase of ``methods.<key>`` for every seed: the model with its masks;
    resumable after a kill, epoch by epoch."""
    method = build_method(key, _method_params(methods, key))
    device = resolve_device(params.device)
    data = load_splits(DATA_FILE, ("train", "val"))
    inputs = [run_dir("pretrain")] if method.from_pretrained else []
    with _work(run_dir(key, "prune"), "prune", params, inputs,
               method=methods[key].model_dump()) as work:
        for seed in params.seeds:
            if work.done(f"seed{seed}"):
                continue
            ctx = _context(data, device, seed, f"prune {key}", work.checkpoint(f"seed{seed}"))
            if method.from_pretrained:
                model = load_run_model(seed_dir(run_dir("pretrain"), seed), device, masked=False)
            else:
                model = fresh_model(params).to(device)
            with _diverged(f"prune {key}", seed, {f"methods.{key}": methods[key]}):
                curves = method.prune(model, ctx)
            print(f"prune {key} seed {seed}: done", flush=True)
            work.finish(f"seed{seed}", _save, model, curves)


def retrain_phase(params: Params, method: MethodParams) -> PhaseParams:
    """The shared ``retrain`` section with the method's own overrides applied."""
    merged = params.retrain.model_dump()
    override = method.retrain.model_dump(exclude_none=True)
    merged["optimizer"].update(override.pop("optimizer", {}))
    merged.update(override)
    from sparsebench.config import validate

    return validate(PhaseParams, merged, prefix="retrain.")


def retrain(params: Params, methods: dict[str, MethodParams], key: str) -> None:
    """Masked fine-tune of ``methods.<key>``'s pruned models (epochs may be 0)."""
    config = retrain_phase(params, _method_params(methods, key))
    phase = config.to_phase(f"retrain {key}")
    device = resolve_device(params.device)
    data = load_splits(DATA_FILE, ("train", "val"))
    with _work(run_dir(key, "retrain"), "retrain", params, [run_dir(key, "prune")],
               retrain=config.model_dump()) as work:
        for seed in params.seeds:
            if work.done(f"seed{seed}"):
                continue
            model = load_run_model(seed_dir(run_dir(key, "prune"), seed), device)
            ctx = _context(data, device, seed, f"retrain {key}", work.checkpoint(f"seed{seed}"))
            with _diverged(f"retrain {key}", seed, {"retrain.optimizer": config.optimizer}):
                curves = masked_retrain(model, phase, ctx)
            work.finish(f"seed{seed}", _save, model, curves)


def _method_params(methods: dict[str, MethodParams], key: str) -> MethodParams:
    if key not in methods:
        raise UsageError(f"--method: {key!r} is not configured under methods in params.yaml; "
                         f"allowed: {', '.join(methods)}")
    return methods[key]


def epoch_budget(params: Params, methods: dict[str, MethodParams], key: str) -> dict[str, int]:
    """Epochs each part of ``methods.<key>`` costs: pretrain share, prune, retrain, total."""
    method = build_method(key, _method_params(methods, key))
    budget = {
        "pretrain": params.pretrain.epochs if method.from_pretrained else 0,
        "prune": method.prune_epochs(dataset_info(DATA_FILE)["sizes"]["train"]),
        "retrain": retrain_phase(params, methods[key]).epochs,
    }
    return {**budget, "total": sum(budget.values())}


def evaluate_stage(params: Params, methods: dict[str, MethodParams], key: str) -> dict:
    """Test-set metrics of every seed, their mean and spread; one MLflow run per seed."""
    device = resolve_device(params.device)
    test_x, test_y = load_splits(DATA_FILE, ("test",))["test"]
    shape = tuple(dataset_info(DATA_FILE)["shape"])
    budget = epoch_budget(params, methods, key)
    per_seed, layers = {}, {}
    with atomic_dir(run_dir(key, "eval")) as out:
        for seed in params.seeds:
            source = seed_dir(run_dir(key, "retrain"), seed)
            model = load_run_model(source, device, masked=False)
            loss, acc = evaluate(model, test_x, test_y, device=device)
            figures = evaluate_model_metrics(model, shape)
            layers[seed] = figures.pop("layers")
            seed_out = seed_dir(out, seed)
            seed_out.mkdir()
            sizes = _checkpoint_sizes(model, source / MODEL, seed_out / CHECKPOINT)
            speed = _latency(model, shape, params.evaluate)
            per_seed[seed] = {"test_accuracy": acc, "test_loss": loss, **figures, **sizes,
                              **speed}
    first = next(iter(per_seed.values()))
    summary = {
        "method": build_method(key, methods[key]).name,
        "params": params_source(key),
        "epochs": budget,
        "mean": {k: statistics.fmean(s[k] for s in per_seed.values()) for k in first},
        "std": {k: _std([s[k] for s in per_seed.values()]) for k in first},
    }
    details = {"seeds": {str(s): v for s, v in per_seed.items()},
               "layers": {str(s): v for s, v in layers.items()}}
    atomic_write_many({Path("evaluation", f"{key}.json"): json.dumps(details, indent=1),
                       Path("metrics", f"{key}.json"): json.dumps(summary, indent=1)})
    if params.tracking.enabled:
        _track(params, methods, key, per_seed, layers, budget)
    return {**summary, **details}


def params_source(key: str) -> dict[str, Any]:
    """Whether ``methods.<key>`` ran with tuned parameters (``tuned/<key>.yaml``) or the
    hand-set ones, and what the study measured for both on the validation split."""
    from sparsebench.tuned import read_tuned

    tuned = read_tuned(key)
    if tuned is None:
        return {"source": "default"}
    info: dict[str, Any] = {"source": "tuned", "study": tuned.study,
                            "trials": tuned.finished_trials, "values": tuned.params,
                            "val_accuracy": tuned.best.val_accuracy,
                            "val_sparsity": tuned.best.sparsity}
    if tuned.handset is not None:
        info["handset_val_accuracy"] = tuned.handset.val_accuracy
        info["handset_val_sparsity"] = tuned.handset.sparsity
    return info


def _checkpoint_sizes(model: torch.nn.Module, dense_file: Path, out: Path) -> dict[str, float]:
    """Write the compressed checkpoint; its size against the dense file and the bound."""
    from sparsebench.checkpoint import information_bound, save

    save(model, out)
    size, dense, bound = out.stat().st_size, dense_file.stat().st_size, information_bound(model)
    return {"checkpoint_bytes": size, "checkpoint_dense_bytes": dense,
            "checkpoint_ratio": dense / size, "checkpoint_bound_ratio": size / bound}


def _latency(model: torch.nn.Module, shape: tuple, cfg: EvaluateParams) -> dict[str, float]:
    """CPU latency of the dense and the CSR-sparse model per batch size, and their ratio."""
    if not cfg.latency_batch_sizes:
        return {}
    from sparsebench.latency import compare_latency

    result = compare_latency(model.cpu(), shape, tuple(cfg.latency_batch_sizes),
                             repeats=cfg.latency_repeats)
    figures = {}
    for batch, row in result["batch"].items():
        figures[f"latency_b{batch}_dense_ms"] = 1000 * row["dense_s"]
        figures[f"latency_b{batch}_sparse_ms"] = 1000 * row["sparse_s"]
        figures[f"latency_b{batch}_ratio"] = row["ratio"]
    return figures


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _track(params: Params, methods: dict[str, MethodParams], key: str,
           per_seed: dict[int, dict], layers: dict[int, dict], budget: dict) -> None:
    from sparsebench.tracking import log_run, logged, tracking_uri

    uri = tracking_uri(params.tracking.uri)
    experiment = params.tracking.experiment or f"sparsebench-{params.suite}"
    method = build_method(key, methods[key])
    for seed, metrics in per_seed.items():
        curves = {stage: _curves(stage, key, seed) for stage in ("prune", "retrain")}
        if method.from_pretrained:
            curves = {"pretrain": _curves("pretrain", None, seed), **curves}
        layer_metrics = {f"layer_sparsity/{name}": v["sparsity"]
                         for name, v in layers[seed].items()}
        run_params = {
            **flatten("method", methods[key].model_dump()),
            **flatten("retrain", retrain_phase(params, methods[key]).model_dump()),
            **flatten("model", params.model.model_dump()),
            **flatten("data", params.data.model_dump()),
            **flatten("epochs", budget),
            "seed": seed,
        }
        tags = {"method": method.name, "method_key": key, "suite": params.suite,
                "seed": str(seed), "dvc_stage": f"evaluate@{key}",
                "params_source": params_source(key)["source"]}
        masks = seed_dir(run_dir(key, "retrain"), seed) / MASKS
        checkpoint = seed_dir(run_dir(key, "eval"), seed) / CHECKPOINT
        with logged(f"evaluate@{key} seed {seed}", uri,
                    f"metrics/{key}.json, evaluation/{key}.json, {run_dir(key, 'eval')}"):
            run_id = log_run(uri, experiment, run_name=f"{key}-seed{seed}", tags=tags,
                             params=run_params, metrics={**metrics, **layer_metrics},
                             curves=curves, artifacts=[(masks, "masks"), (checkpoint, "model")])
        print(f"evaluate {key} seed {seed}: test_acc {metrics['test_accuracy']:.4f} "
              f"sparsity {metrics['sparsity']:.4f} (mlflow run {run_id})", flush=True)


def _curves(stage: str, key: str | None, seed: int) -> list[dict]:
    base = run_dir("pretrain") if stage == "pretrain" else run_dir(key, stage)
    path = seed_dir(base, seed) / CURVES
    return json.loads(path.read_text()) if path.exists() else []


def load_results(methods: dict[str, Any]) -> dict[str, dict]:
    """Summary and details of every configured method's evaluation, by method key."""
    results = {}
    for key in methods:
        paths = [Path("metrics", f"{key}.json"), Path("evaluation", f"{key}.json")]
        for path in paths:
            if not path.exists():
                raise UsageError(f"input: {str(path)!r} does not exist; run evaluate@{key} first")
        results[key] = {**json.loads(paths[0].read_text()), **json.loads(paths[1].read_text())}
    return results


def report(params: Params, methods: dict[str, MethodParams]) -> None:
    """The comparison table and plots of every configured method; logged to MLflow too."""
    from sparsebench.report import write_report

    results = load_results(methods)
    first = params.seeds[0]
    curves = {key: _curves("prune", key, first) + _curves("retrain", key, first)
              for key in methods}
    prune_curves = {key: _curves("prune", key, first) for key in methods}
    files = write_report(results, curves, params.suite, prune_curves)
    print(Path("reports/summary.md").read_text())
    if params.tracking.enabled:
        from sparsebench.tracking import log_run, logged, tracking_uri

        experiment = params.tracking.experiment or f"sparsebench-{params.suite}"
        uri = tracking_uri(params.tracking.uri)
        with logged("the report", uri, "reports/"):
            log_run(uri, experiment, run_name="report",
                    tags={"suite": params.suite, "dvc_stage": "report", "method": "report"},
                    params={"methods": ",".join(methods), "seeds": params.seeds},
                    metrics={f"{key}/test_accuracy": r["mean"]["test_accuracy"]
                             for key, r in results.items()},
                    curves={}, artifacts=[(path, "report") for path in files])
