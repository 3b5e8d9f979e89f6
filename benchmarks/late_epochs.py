"""The last epoch of a prune phase against its first: ADMM, ADMM-l1, gmp and SAS-ADMM on the
default suite, same process.

Entries decaying toward zero turn subnormal in the late epochs (benchmarks/late_epochs.md: gmp's
masked momentum buffers, ADMM's W, U and Adam moments of dead units), which some CPUs compute
many times slower (issue 13: late ADMM epochs 10 to 36 s against 0.8 s, gmp 1.7 s against 0.8 s).

    python benchmarks/late_epochs.py [--methods admm admm_l1 gmp sas_admm]
        [--pretrained PATH] [--threads 1] [--no-fix]

Each method runs its prune phase with the default suite's settings (params.yaml read and
validated by `sparsebench.suite.load.load_params`, tuned values laid over it as the pipeline does)
from the suite's pretrained model: ``--pretrained PATH``, else runs/pretrain/seed0 when it
exists, else one trained here from the seed-0 initialisation as params.yaml's ``pretrain`` says.
The figure is the seconds of the last epoch over those of the first (SAS-ADMM: the last and the
first iteration, per minibatch step, since M_k grows), in CPU seconds of one intra-op thread
(``--threads``) after an uncounted warm-up epoch. Target: <= 1.10. ``--no-fix`` runs
without the fix (optimizer state of masked entries left to decay) and without the guard
(`sparsebench.core.numerics.flush_subnormals`), for comparison.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sparsebench.checkpoint import load_model
from sparsebench.core.numerics import flush_subnormals
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.train import Phase, fit, seed_everything
from sparsebench.data import load_splits
from sparsebench.methods import build_method
from sparsebench.methods.base import Context
from sparsebench.run import MODEL
from sparsebench.suite.load import load_params
from sparsebench.suite.params import Params
from sparsebench.suite.plan import DATA_FILE, model_spec

PRETRAINED = Path("runs", "pretrain", "seed0", MODEL)
METHODS = ("admm", "admm_l1", "gmp", "sas_admm")


def suite(path: str = "params.yaml") -> tuple[Params, dict, dict]:
    """The validated params, the method params and the train / val splits."""
    params, methods = load_params(path)
    return params, methods, load_splits(DATA_FILE, ("train", "val"))


def pretrained_model(params: Params, data: dict,
                     path: str | None = None) -> Callable[[], torch.nn.Module]:
    """A factory of fresh copies of the suite's seed-0 pretrained model."""
    source = Path(path) if path else PRETRAINED
    if source.exists():
        print(f"pretrained model: {source}", flush=True)
        return lambda: load_model(source, "cpu")[0]
    print(f"pretrained model: training one ({params.pretrain.epochs} epochs, seed 0)", flush=True)
    generator = seed_everything(0)
    model = model_spec(params).build()
    fit(model, data["train"], data["val"], params.pretrain.to_phase("pretrain"),
        generator=generator, device=torch.device("cpu"), progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def copy() -> torch.nn.Module:
        fresh = model_spec(params).build()
        fresh.load_state_dict(state)
        return fresh
    return copy


def without_fix() -> None:
    """Undo the fix in this process: masks leave the optimizer state of pruned entries as is."""
    import sparsebench.core.sparsity as sparsity

    sparsity.zero_masked_state = lambda *args, **kwargs: None


def epoch_seconds(key: str, methods: dict, model: torch.nn.Module, data: dict,
                  params: Params, level: float) -> list[dict]:
    """The prune phase of ``methods.<key>`` at compression ``level`` from ``model``, seed 0:
    per epoch (SAS-ADMM: per iteration) its CPU and wall seconds, validation pass included, and
    its minibatch steps."""
    from sparsebench.suite.plan import at_level, layer_sizes

    [(_, at)] = at_level(params, key, methods[key], level, layer_sizes(model_spec(params)))
    method = build_method(key, at)
    rows, last = [], [time.process_time(), time.perf_counter()]

    def seen(row: dict) -> None:
        now = [time.process_time(), time.perf_counter()]
        rows.append({"epoch": row["epoch"], "cpu": now[0] - last[0], "wall": now[1] - last[1],
                     "steps": row.get("inner_steps", 1)})
        last[:] = now

    ctx = Context(train=data["train"], val=data["val"], device=torch.device("cpu"),
                  generator=seed_everything(0), seed=0, progress=False, on_epoch=seen)
    method.prune(model, ctx)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--pretrained", help="a dense model file (sparsebench save_model)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--level", type=float, default=32.0,
                        help="the compression level the methods prune to (a suite level)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: CPU time is then robust to other load)")
    parser.add_argument("--no-fix", action="store_true",
                        help="without the fix and the guard: the figures as they were")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.no_fix:
        without_fix()
        flush_subnormals(False)
        flushed = False
    else:
        flushed = flush_subnormals(True)  # before any tensor operation, as the CLI does
    params, methods, data = suite(args.params)
    pretrained = pretrained_model(params, data, args.pretrained)
    print(f"LeNet-300-100, MNIST {len(data['train'][1])} samples, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fix {'off' if args.no_fix else 'on'}, "
          f"subnormals {'flushed' if flushed else 'kept'}; CPU seconds (wall in brackets)")
    warm = Phase(1, 128, OptimizerParams(name="adam", lr=1e-3, schedule="constant"), "warm-up")
    fit(pretrained(), data["train"], data["val"], warm, generator=seed_everything(0),
        device=torch.device("cpu"), progress=False)  # not counted: the process's first epoch
    for key in args.methods:
        rows = epoch_seconds(key, methods, pretrained(), data, params, args.level)
        first, last = rows[0], rows[-1]
        unit = "s/step" if key == "sas_admm" else "s"
        a, b = first["cpu"] / first["steps"], last["cpu"] / last["steps"]
        every = " ".join(f"{r['cpu']:.1f}" for r in rows)
        print(f"{key:9s} epochs: {every}")
        print(f"{key:9s} first {a:.4g} {unit} ({first['wall'] / first['steps']:.4g}), "
              f"last {b:.4g} {unit} ({last['wall'] / last['steps']:.4g}), "
              f"ratio last/first: {b / a:.3f}  (target <= 1.10)", flush=True)


if __name__ == "__main__":
    main()
