"""SAS-ADMM's fidelity options switched one at a time, on the default suite at one level.

The released code (Yuan et al. 2024, ALGORITHMS.md section 4) starts Z at W, freezes every
parameter but the weights and draws minibatches with replacement; these are the defaults of
`sparsebench.methods.sas_admm` (``authors``). Each other variant flips one option, and
``previous`` flips all three (the project's behaviour before the options existed). Every
variant is the pipeline's own run (`sparsebench.suite.plan`, `sparsebench.run.execute`: prune,
masked retrain, test) at the same level and seeds, from the suite's pretrained models
(runs/pretrain, `dvc repro pretrain` first); the table gives test accuracy mean ± std and the
difference to ``authors`` paired by seed with its 95% Student-t interval.

    python benchmarks/sas_admm_fidelity.py [--level 32] [--seeds 0 1 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sparsebench.config import load_params
from sparsebench.curves import paired_difference, relation
from sparsebench.data import dataset_info, load_splits
from sparsebench.methods import method_params
from sparsebench.numerics import flush_subnormals
from sparsebench.run import RESULT, environment, execute
from sparsebench.suite import DATA_FILE, plan
from sparsebench.train import resolve_device
from sparsebench.workers import Task, raise_failures, run_tasks

VARIANTS = {
    "authors": {},
    "z_init=soft_threshold": {"z_init": "soft_threshold"},
    "train_non_weights=true": {"train_non_weights": True},
    "sampling=without_replacement": {"sampling": "without_replacement"},
    "previous": {"z_init": "soft_threshold", "train_non_weights": True,
                 "sampling": "without_replacement"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--level", type=float, default=32.0, help="a compression level of the suite")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: params seeds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/sas_admm_fidelity.json")
    args = ap.parse_args()
    flush_subnormals()
    params, methods = load_params("params.yaml")
    if args.seeds:
        params = params.model_copy(update={"seeds": args.seeds})
    base = methods["sas_admm"].model_dump(exclude_none=True)
    device = resolve_device(params.device)
    data = load_splits(DATA_FILE, ("train", "val", "test"))
    shape = tuple(dataset_info(DATA_FILE)["shape"])
    env = environment(device, params.execution.threads, args.workers)
    scratch = Path(tempfile.mkdtemp(prefix="sas-fidelity-"))
    tasks, outs = [], {}
    for name, change in VARIANTS.items():
        variant = {**methods, "sas_admm": method_params("sas_admm", {**base, **change})}
        for p in plan(params, variant, "sas_admm"):
            if abs(p.spec.level - args.level) > 1e-9:
                continue
            out = scratch / name / f"seed{p.spec.seed}"
            outs[name, p.spec.seed] = out
            tasks.append(Task(f"{name} seed {p.spec.seed}", lambda p=p, out=out: execute(
                p.spec, data, device, out, fingerprint="", budget=p.budget, shape=shape,
                env=env)))
    if not tasks:
        raise SystemExit(f"--level {args.level:g} is not a level of the suite")
    print(f"{len(tasks)} runs at {args.level:g}x, {args.workers} workers", flush=True)
    raise_failures("sas_admm_fidelity", run_tasks(tasks, workers=args.workers,
                                                  threads=params.execution.threads), len(tasks))
    rows = []
    for (name, seed), out in outs.items():
        result = json.loads((out / RESULT).read_text())
        figures = result["figures"]
        rows.append({"method": name, "level": args.level, "level_sparsity": 1 - 1 / args.level,
                     "seed": seed, "interpolated": False, "epochs": result["epochs"]["total"],
                     "test_accuracy": figures["test_accuracy"], "sparsity": figures["sparsity"],
                     "compression": figures["compression_ratio"],
                     "flop_speedup": figures["theoretical_speedup"],
                     "train_seconds": result["seconds"]["train"]})
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"\n| variant | test accuracy (%) | minus authors (pp), 95% CI |\n|---|---|---|")
    for name in VARIANTS:
        acc = [100 * r["test_accuracy"] for r in rows if r["method"] == name]
        mean = sum(acc) / len(acc)
        std = (sum((a - mean) ** 2 for a in acc) / max(1, len(acc) - 1)) ** 0.5
        diff = "" if name == "authors" else paired_difference(rows, name, "authors", args.level)
        text = "" if not diff else (f"{100 * diff['mean']:+.2f} [{100 * diff['low']:+.2f}, "
                                    f"{100 * diff['high']:+.2f}] {relation(diff)}")
        print(f"| {name} | {mean:.2f} ± {std:.2f} | {text} |")
    print(f"\nrows: {args.out}; runs: {scratch}")


if __name__ == "__main__":
    main()
