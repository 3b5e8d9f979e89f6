"""A method's options switched, run by the pipeline beside its params.yaml settings, paired.

Each ``--variant`` sets some of ``methods.<key>``'s parameters (``key=value[,key=value]``,
values read as YAML); the baseline is the method as params.yaml (with tuned/ and calibrated/
laid over it) sets it. Every variant is the pipeline's own run (`sparsebench.suite.plan`,
`sparsebench.run.execute`: prune, masked retrain, test) at the same levels and seeds, from the
suite's pretrained models (runs/pretrain: `dvc repro pretrain` first), written to a scratch
directory. The table gives test accuracy mean ± std per level and the difference to the
baseline paired by seed with its 95% Student-t interval (≈: within noise).

    python benchmarks/method_variants.py --method sas_admm --levels 32 \
        --variant z_init=soft_threshold --variant train_non_weights=true \
        --variant sampling=without_replacement \
        --variant z_init=soft_threshold,train_non_weights=true,sampling=without_replacement
    python benchmarks/method_variants.py --method admm --variant dual_rescale=true
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import yaml

from sparsebench.core.numerics import flush_subnormals
from sparsebench.core.train import resolve_device
from sparsebench.data import dataset_info, load_splits
from sparsebench.methods import method_class, method_params
from sparsebench.pipeline.executor import run_tasks
from sparsebench.pipeline.tasks import Placement, Task, raise_failures
from sparsebench.report.stats import paired_difference, relation
from sparsebench.run import RESULT, environment, execute, read_result
from sparsebench.suite.load import load_params
from sparsebench.suite.plan import DATA_FILE, plan


def parse_variant(text: str) -> dict:
    """``key=value[,key=value]`` -> {key: value}, values as YAML (true, 0.5, soft_threshold)."""
    pairs = [part.split("=", 1) for part in text.split(",")]
    if any(len(p) != 2 or not p[0] for p in pairs):
        raise SystemExit(f"--variant: {text!r} is not key=value[,key=value]")
    return {key: yaml.safe_load(value) for key, value in pairs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, help="a key under methods: in params.yaml")
    ap.add_argument("--variant", action="append", required=True, type=parse_variant,
                    help="key=value[,key=value]: parameters of the method to change")
    ap.add_argument("--levels", type=float, nargs="+", default=None,
                    help="compression levels of the suite (default: all the method runs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: params seeds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="the rows as JSON "
                    "(default: benchmarks/method_variants_<method>.json)")
    args = ap.parse_args()
    flush_subnormals()
    params, methods = load_params("params.yaml")
    if args.seeds:
        params = params.model_copy(update={"seeds": args.seeds})
    key = args.method
    if key not in methods:
        raise SystemExit(f"--method: {key!r} is not a key of methods:")
    base = methods[key].model_dump(exclude_none=True)
    variants = {"params.yaml": {}, **{",".join(f"{k}={v}" for k, v in change.items()): change
                                      for change in args.variant}}
    device = resolve_device(params.device)
    data = load_splits(DATA_FILE, ("train", "val", "test"))
    shape = tuple(dataset_info(DATA_FILE)["shape"])
    env = environment(device, params.execution.threads, args.workers)
    calibration = None
    if method_class(key, base).kind() == "regularised":
        from sparsebench.pipeline.calibrate import read_calibration

        calibration = read_calibration(key, methods[key])
    scratch = Path(tempfile.mkdtemp(prefix="method-variants-"))
    tasks, outs = [], {}
    for name, change in variants.items():
        variant = {**methods, key: method_params(key, {**base, **change})}
        for p in plan(params, variant, key, calibration):
            if p.spec.point or (args.levels and not any(
                    abs(p.spec.level - level) < 1e-9 for level in args.levels)):
                continue  # bracketed points are left out: no interpolation here
            out = scratch / name / p.out.parent.name / f"seed{p.spec.seed}"
            outs[name, p.spec.level, p.spec.seed] = out
            # each run trains its own prune phase: the pipeline's shared one
            # (runs/<key>/prune) is the params.yaml variant's, not this one's
            spec = dataclasses.replace(p.spec, shared_prune=None)
            tasks.append(Task(f"{name} seed {p.spec.seed}", lambda spec=spec, p=p, out=out:
                              execute(spec, data, device, out, fingerprint="", budget=p.budget,
                                      shape=shape, env=env)))
    if not tasks:
        raise SystemExit(f"--levels: none of {args.levels} is a level methods.{key} runs at")
    print(f"{len(tasks)} runs, {args.workers} workers", flush=True)
    raise_failures("method_variants", run_tasks(tasks, Placement(
        args.workers, params.execution.threads)), len(tasks))
    rows = []
    for (name, level, seed), out in outs.items():
        result = read_result(json.loads((out / RESULT).read_text()))
        figures = result["figures"]
        rows.append({"method": name, "level": level, "level_sparsity": 1 - 1 / level,
                     "seed": seed, "interpolated": False, "epochs": result["epochs"]["total"],
                     "test_accuracy": figures["test_accuracy"], "sparsity": figures["sparsity"],
                     "compression": figures["compression"],
                     "flop_speedup": figures["flop_speedup"],
                     "train_seconds": result["seconds"]["train"]})
    out = Path(args.out or f"benchmarks/method_variants_{key}.json")
    out.write_text(json.dumps(rows, indent=1))
    print(f"\n{key}, seeds {params.seeds}\n\n| level | variant | test accuracy (%) | "
          "minus params.yaml's (pp), 95% CI |\n|---|---|---|---|")
    for level in sorted({r["level"] for r in rows}):
        for name in variants:
            acc = [100 * r["test_accuracy"] for r in rows
                   if r["method"] == name and r["level"] == level]
            mean = sum(acc) / len(acc)
            std = (sum((a - mean) ** 2 for a in acc) / max(1, len(acc) - 1)) ** 0.5
            diff = None if name == "params.yaml" else paired_difference(rows, name,
                                                                        "params.yaml", level)
            text = "" if not diff else (f"{100 * diff['mean']:+.2f} [{100 * diff['low']:+.2f}, "
                                        f"{100 * diff['high']:+.2f}] {relation(diff)}")
            print(f"| {level:g}x | {name} | {mean:.2f} ± {std:.2f} | {text} |")
    print(f"\nrows: {out}; runs: {scratch}")


if __name__ == "__main__":
    main()
