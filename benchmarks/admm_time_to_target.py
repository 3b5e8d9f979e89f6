"""SAS-ADMM's speed claim, measured: epochs and wall time for ``admm`` and ``sas_admm`` to reach
the target sparsity at the dense model's accuracy minus 0.5 points (ALGORITHMS.md section 4).

Both start from the same pretrained model (runs/pretrain/seed0) of the default suite and run
their prune phase as configured in params.yaml, one after the other in this process. After
every ADMM iteration a copy of the current weights is hard-pruned per layer to the target (the
mask each method ends with: P_k(W) for ADMM, per-layer magnitude for SAS-ADMM) and scored on the
validation split, without retraining; the time of that check is not counted. The first
iteration whose pruned copy reaches dense - 0.5 points is the time to target.

    python benchmarks/admm_time_to_target.py [--params params.yaml] [--seed 0] [--scale 3]

``--scale K`` runs K times the configured iterations (and SAS-ADMM's averaging start), so a
method that does not reach the target within its configured phase gets the chance; a phase
stops as soon as its target is met.

Run it from the suite's directory after `dvc repro` (it needs data/prepared and runs/pretrain).
"""

from __future__ import annotations

import argparse
import copy
import time
from contextlib import suppress
from pathlib import Path

import torch

from sparsebench.config import load_params
from sparsebench.data import load_splits
from sparsebench.methods import build_method
from sparsebench.methods.base import Context
from sparsebench.sparsity import apply_masks, magnitude_masks
from sparsebench.run import load_run_model
from sparsebench.suite import DATA_FILE
from sparsebench.train import evaluate, seed_everything


class Reached(Exception):
    """Raised by the per-iteration check to end a phase once its target is met."""


def race(key: str, methods: dict, data: dict, start: torch.nn.Module, target: float,
         seed: int) -> dict:
    """Run ``methods[key]``'s prune phase; return when its pruned copy first met ``target``."""
    method = build_method(key, methods[key])
    p = methods[key]
    model = copy.deepcopy(start)
    n_train = len(data["train"][1])
    checks, rows, first = 0.0, [], None
    began = time.perf_counter()

    def on_iteration(row: dict) -> None:
        nonlocal checks, first
        check = time.perf_counter()
        pruned = copy.deepcopy(model)
        apply_masks(pruned, magnitude_masks(pruned, p.targets(pruned, key), "layer"))
        accuracy = evaluate(pruned, *data["val"])[1]
        k = row["epoch"]
        if key == "sas_admm":
            steps = sum(r.get("inner_steps", 0) for r in rows) + row["inner_steps"]
            epochs = steps * p.batch_size / n_train
        else:
            epochs = k * p.epochs_per_iteration
        rows.append({**row, "pruned_val_accuracy": accuracy})
        checks += time.perf_counter() - check
        seconds = time.perf_counter() - began - checks
        print(f"{key} iteration {k}: {epochs:.2f} epochs, {seconds:.1f} s, pruned val "
              f"{100 * accuracy:.2f}%", flush=True)
        if first is None and accuracy >= target:
            first = {"iteration": k, "epochs": epochs, "seconds": seconds,
                     "pruned_val_accuracy": accuracy}
            raise Reached

    ctx = Context(train=data["train"], val=data["val"], device=torch.device("cpu"),
                  generator=seed_everything(seed), seed=seed, on_epoch=on_iteration)
    with suppress(Reached):
        method.prune(model, ctx)
    total = time.perf_counter() - began - checks
    final = evaluate(model, *data["val"])[1]
    return {"first": first, "total_seconds": total, "iterations": len(rows),
            "final_val_accuracy": final}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    params, methods = load_params(args.params)
    for key in ("admm", "sas_admm"):
        p = methods[key]
        update = {"iterations": p.iterations * args.scale}
        if key == "sas_admm":
            update["last"] = p.last * args.scale
        methods[key] = p.model_copy(update=update)
    data = load_splits(DATA_FILE, ("train", "val"))
    dense = load_run_model(Path("runs", "pretrain", f"seed{args.seed}"),
                           torch.device("cpu"), masked=False)
    dense_val = evaluate(dense, *data["val"])[1]
    target = dense_val - 0.005
    print(f"{params.suite}: {params.data.dataset}, dense val "
          f"{100 * dense_val:.2f}%, target {100 * target:.2f}% at the configured sparsity, "
          f"{torch.get_num_threads()} threads, iterations x{args.scale}")
    results = {key: race(key, methods, data, dense, target, args.seed)
               for key in ("admm", "sas_admm")}
    for key, r in results.items():
        first = r["first"]
        reached = (f"reached at iteration {first['iteration']}: {first['epochs']:.2f} epochs, "
                   f"{first['seconds']:.1f} s" if first else "not reached")
        print(f"{key}: {reached}; whole phase {r['iterations']} iterations, "
              f"{r['total_seconds']:.1f} s")
    a, s = results["admm"]["first"], results["sas_admm"]["first"]
    if a and s:
        print(f"sas_admm / admm to target: epochs {s['epochs'] / a['epochs']:.2f}, "
              f"wall time {s['seconds'] / a['seconds']:.2f}")


if __name__ == "__main__":
    main()
