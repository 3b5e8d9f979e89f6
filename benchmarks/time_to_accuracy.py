"""Time to accuracy for the ADMM family: accuracy against epochs and wall seconds, equal budgets,
equal tuning, several seeds (issue 15; ALGORITHMS.md sections 2 to 4).

Methods, at each ``--levels`` compression of the default suite (the suite's per-layer rule,
`sparsebench.suite.plan.at_level`): ``admm`` (cardinality Z-step, Adam W-step, as the authors),
``admm_l1`` (l1 Z-step, Adam), ``admm_l1_sgd`` (l1 Z-step, SGD with momentum 0.9: the
like-for-like baseline of SAS-ADMM, which has an l1 Z-step and no Adam), ``sas_admm`` and
``gmp`` (a non-ADMM reference). Every method starts from the suite's pretrained model of its
seed (runs/pretrain/seed<s>: `dvc repro pretrain` first) and gets the same prune budget of
``8 x --scale`` epochs:

- ADMM and ADMM-l1: that many iterations of one epoch;
- gmp: that many epochs, its masks reaching the level at 3/4 of them;
- SAS-ADMM: as many iterations as fit the budget (its minibatches counted as epochs), ``last``
  at the same fraction of them as params.yaml's ``last / iterations``.

Each check (every ``--check`` epochs; for SAS-ADMM the first iteration boundary at or past the
mark, with its real epoch count) scores what the method returns at that point: ADMM's W
projected to the level (P(W)), ADMM-l1's |W| cut to the level, SAS-ADMM's ergodic average once
k >= last (its current W before that: what it returns when stopped there), gmp's weights cut to
the level. A copy is pruned to exactly the level's per-layer targets, retrained for one masked
epoch (the suite's retrain optimizer) and scored on the test split; the check's own time is not
counted. ``wall_seconds`` is the method's training time up to the check (its training loops,
`seconds` of its rows: validation passes and the checks are left out for every method alike;
ADMM's Z-step, a top-k per layer once an epoch, is left out too).

Tuning: each method's own knobs, ``--trials`` Optuna TPE trials per (method, level) (Optuna's
SQLite storage under ``--out``), objective the validation accuracy of the returned model after
the one-epoch retrain at the end of the budget, batch order seed 100 (not an evaluation seed),
from seed 0's pretrained model. Spaces: ADMM family: lr, rho, rho growth; SAS-ADMM: v, M, k0,
beta; gmp: lr. ``--trials 0`` runs params.yaml's values (tuned/ laid over, as the pipeline).

``--scale s`` multiplies every schedule length: the budget (8 s epochs), gmp's pruning window,
SAS-ADMM's M and k0 (its iteration count then follows from the budget) and the tuning ranges of
M and k0.

    python benchmarks/time_to_accuracy.py [--levels 16 64] [--seeds 0 1 2] [--trials 8]
        [--scale 1] [--check 1] [--workers 2] [--out benchmarks/time_to_accuracy]

Writes ``<out>/time_to_accuracy.csv`` (method, level, seed, epoch, wall_seconds,
test_accuracy, returned), ``<out>/summary.txt``, ``<out>/time_to_accuracy.png`` (accuracy
against epochs and against seconds, one line per method, the band min..max over seeds),
``<out>/tuned.json``, and prints per level the epochs and seconds each method takes to reach
three targets (the lowest final mean, the highest final mean minus 1 point, gmp's final mean),
with the SAS-ADMM minus ADMM differences paired by seed (95% Student-t interval).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import itertools
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch

from sparsebench.core.numerics import flush_subnormals
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.sparsity import apply_masks, magnitude_masks, make_permanent, prunable_modules
from sparsebench.core.train import Phase, evaluate, resolve_device
from sparsebench.data import load_splits
from sparsebench.methods import build_method, method_params
from sparsebench.methods.base import Context
from sparsebench.methods.retrain import masked_retrain
from sparsebench.methods.sas_admm import inner_steps
from sparsebench.pipeline.executor import run_tasks
from sparsebench.pipeline.tasks import Placement, Task, raise_failures
from sparsebench.report.stats import t_quantile
from sparsebench.run import load_run_model
from sparsebench.suite.load import load_params
from sparsebench.suite.plan import DATA_FILE, at_level, augment_of, layer_sizes, model_spec
from sparsebench.suite.tuned import overlay

BUDGET = 8  # prune epochs at --scale 1: the default suite's admm and gmp phases
TUNING_SEED = 100
METHODS = {  # benchmark name -> (registered method, dotted changes to params.yaml's entry)
    "admm": ("admm", {}),
    "admm_l1": ("admm_l1", {}),
    "admm_l1_sgd": ("admm_l1", {"optimizer.name": "sgd", "optimizer.lr": 0.01,
                                "optimizer.momentum": 0.9, "optimizer.schedule": "constant"}),
    "sas_admm": ("sas_admm", {}),
    "gmp": ("gmp", {}),
}
ADMM_SPACE = {"rho": ("log", 1e-4, 1e-1), "rho_growth": ("float", 1.0, 2.0)}


def space(name: str, scale: float) -> dict[str, tuple]:
    """Each method's own knobs: (kind, low, high); ``optimizer.lr`` is the W-step's lr."""
    if name in ("admm", "admm_l1"):
        return {"optimizer.lr": ("log", 1e-4, 1e-2), **ADMM_SPACE}
    if name == "admm_l1_sgd":
        return {"optimizer.lr": ("log", 1e-3, 1e-1), **ADMM_SPACE}
    if name == "sas_admm":
        return {"v": ("log", 5.0, 100.0), "beta": ("log", 0.01, 0.2),
                "M": ("intlog", max(1, round(25 * scale)), max(2, round(200 * scale))),
                "k0": ("int", max(1, round(2 * scale)), max(2, round(20 * scale)))}
    return {"optimizer.lr": ("log", 1e-3, 1e-1)}  # gmp


def suggest(trial, knobs: dict[str, tuple]) -> dict[str, float]:
    out = {}
    for key, (kind, low, high) in knobs.items():
        if kind == "log":
            out[key] = trial.suggest_float(key, low, high, log=True)
        elif kind == "float":
            out[key] = trial.suggest_float(key, low, high)
        else:
            out[key] = trial.suggest_int(key, low, high, log=kind == "intlog")
    return out


def sas_iterations(M: int, k0: int, q: float, budget: int, batch: int, n_train: int) -> int:
    """The most SAS-ADMM iterations whose minibatches fit ``budget`` epochs."""
    k, steps = 0, 0
    while (steps + inner_steps(k + 1, M, k0, q)) * batch <= budget * n_train:
        k += 1
        steps += inner_steps(k, M, k0, q)
    if k == 0:
        raise SystemExit(f"sas_admm: M {M} minibatches of {batch} exceed the budget of "
                         f"{budget} epochs")
    return k


def configure(name: str, base: dict, knobs: dict, budget: int, scale: float,
              n_train: int) -> dict:
    """params.yaml's entry with the benchmark's change, the knobs and the budget."""
    registered, change = METHODS[name]
    cfg = overlay(base, {**change, **knobs, "method": registered})
    if registered in ("admm", "admm_l1"):
        cfg.update(iterations=budget, epochs_per_iteration=1)
    elif registered == "gmp":
        cfg.update(epochs=budget, start_epoch=0, end_epoch=max(1, round(0.75 * budget)))
    else:
        if "M" not in knobs:
            cfg["M"] = max(1, round(base["M"] * scale))
        if "k0" not in knobs:
            cfg["k0"] = max(1, round(base["k0"] * scale))
        fraction = base["last"] / base["iterations"]
        cfg["iterations"] = sas_iterations(cfg["M"], cfg["k0"], cfg.get("q", 1.1), budget,
                                           cfg.get("batch_size", 256), n_train)
        cfg["last"] = max(1, round(fraction * cfg["iterations"]))
    return cfg


class Checker:
    """Scores what a method returns at each check mark (see the module docstring)."""

    def __init__(self, name: str, model: torch.nn.Module, method, retrain: Phase, split,
                 train, val, n_train: int, check: float, seed: int, augment=None):
        self.name, self.model, self.method, self.augment = name, model, method, augment
        self.p = method.params
        self.retrain, self.split, self.train, self.val = retrain, split, train, val
        self.n_train, self.check, self.seed = n_train, check, seed
        self.epochs = self.seconds = 0.0
        self.mark = check
        self.rows: list[dict] = []
        self.sums: dict[str, torch.Tensor] = {}
        self.averaged = 0
        if method.name == "sas_admm":  # the parameters SAS-ADMM averages (its W)
            weights = {f"{n}.weight" for n, _ in prunable_modules(model)}
            self.averaged_names = [n for n, q in model.named_parameters()
                                   if n in weights or (self.p.train_non_weights
                                                       and q.requires_grad)]

    def __call__(self, row: dict) -> None:
        self.seconds += row["seconds"]
        if self.method.name == "sas_admm":
            self.epochs += row["inner_steps"] * self.p.batch_size / self.n_train
            if row["epoch"] >= self.p.last:  # as SASADMM.accumulate, in the same order
                params = dict(self.model.named_parameters())
                for n in self.averaged_names:
                    w = params[n].detach()
                    self.sums[n] = self.sums[n].add_(w) if n in self.sums else w.clone()
                self.averaged += 1
        else:
            self.epochs += 1
        if self.epochs + 1e-9 >= self.mark:
            self.score()
            while self.mark <= self.epochs + 1e-9:
                self.mark += self.check

    @torch.no_grad()
    def returned(self) -> tuple[torch.nn.Module, str]:
        snap = copy.deepcopy(self.model)
        make_permanent(snap)  # gmp's masks folded into its weights
        what = "W"
        if self.averaged:
            params = dict(snap.named_parameters())
            for n, total in self.sums.items():
                params[n].copy_(total / self.averaged)
            what = "average"
        return snap, what

    def score(self) -> None:
        snap, what = self.returned()
        apply_masks(snap, magnitude_masks(snap, self.p.targets(snap, self.method.key)))
        generator = torch.Generator().manual_seed(self.seed * 1000 + len(self.rows))
        ctx = Context(train=self.train, val=self.val, device=torch.device("cpu"),
                      generator=generator, seed=self.seed, progress=False, augment=self.augment)
        masked_retrain(snap, self.retrain, ctx)
        _, accuracy = evaluate(snap, *self.split)
        self.rows.append({"epoch": round(self.epochs, 4), "wall_seconds": round(self.seconds, 3),
                          "accuracy": accuracy, "returned": what})


def one_run(name: str, cfg: dict, seed: int, pretrained: int, retrain: Phase, data: dict,
            split: str, n_train: int, check: float, out: Path, augment=None) -> None:
    """Train ``name`` with ``cfg`` from seed ``pretrained``'s model, batches from ``seed``
    (through the suite's ``data.augment``, as the pipeline's runs); write its check rows to
    ``out`` (JSON)."""
    torch.manual_seed(seed)
    params = method_params(name, cfg)
    method = build_method(name, params)
    model = load_run_model(Path(f"runs/pretrain/seed{pretrained}"), torch.device("cpu"),
                           masked=False)
    checker = Checker(name, model, method, retrain, data[split], data["train"], data["val"],
                      n_train, check, seed, augment)
    ctx = Context(train=data["train"], val=data["val"], device=torch.device("cpu"),
                  generator=torch.Generator().manual_seed(seed), seed=seed, progress=False,
                  on_epoch=checker, augment=augment)
    method.prune(model, ctx)
    if not checker.rows or checker.rows[-1]["epoch"] < checker.epochs - 1e-9:
        checker.score()  # the end of the budget is always scored
    out.write_text(json.dumps(checker.rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=float, nargs="+", default=[16.0, 64.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--trials", type=int, default=8, help="Optuna trials per (method, level)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--check", type=float, default=1.0, help="epochs between two checks")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/time_to_accuracy")
    args = ap.parse_args()
    if args.scale <= 0 or args.check <= 0 or args.trials < 0:
        raise SystemExit("--scale and --check must be > 0, --trials >= 0")
    flush_subnormals()
    params, methods = load_params("params.yaml")
    if resolve_device(params.device).type != "cpu":
        raise SystemExit("this benchmark runs on the CPU (its workers fork)")
    data = load_splits(DATA_FILE, ("train", "val", "test"))
    augment = augment_of(params)
    n_train = len(data["train"][1])
    sizes = layer_sizes(model_spec(params))
    budget = max(1, round(BUDGET * args.scale))
    retrain = Phase(1, params.retrain.batch_size, OptimizerParams(
        **{**params.retrain.optimizer.model_dump(), "schedule": "cosine"}), "check retrain")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="tta-"))
    numbers = itertools.count()

    def at(name: str, level: float) -> dict:
        registered, _ = METHODS[name]
        (_, leveled), = at_level(params, registered, methods[registered], level, sizes)
        return leveled.model_dump(exclude_none=True)

    def run_all(jobs: list[tuple]) -> list[list[dict]]:
        tasks, files = [], []
        for name, cfg, seed, pretrained, split in jobs:
            file = scratch / f"{next(numbers)}.json"
            files.append(file)
            check = args.check if split == "test" else math.inf  # a trial: its end only
            tasks.append(Task(f"{name} seed {seed}", lambda a=(name, cfg, seed, pretrained,
                                                               split, file, check): one_run(
                a[0], a[1], a[2], a[3], retrain, data, a[4], n_train, a[6], a[5], augment)))
        raise_failures("time_to_accuracy", run_tasks(tasks, Placement(
            args.workers, params.execution.threads)),
                       len(tasks))
        return [json.loads(f.read_text()) for f in files]

    tuned: dict[str, dict] = {}
    for level in args.levels:
        for name in args.methods:
            knobs: dict = {}
            if args.trials:
                knobs = tune(name, level, at(name, level), budget, args, n_train, run_all, out)
            tuned[f"{name}@{level:g}"] = knobs
            print(f"{name} at {level:g}x: {knobs or 'params.yaml'}", flush=True)
    (out / "tuned.json").write_text(json.dumps(tuned, indent=1))

    jobs, keys = [], []
    for level in args.levels:  # methods interleaved, so a change in the machine's load
        for seed in args.seeds:  # falls on all of them alike
            for name in args.methods:
                cfg = configure(name, at(name, level), tuned[f"{name}@{level:g}"], budget,
                                args.scale, n_train)
                jobs.append((name, cfg, seed, seed, "test"))
                keys.append((name, level, seed))
    rows = []
    for (name, level, seed), checks in zip(keys, run_all(jobs), strict=True):
        rows += [{"method": name, "level": level, "seed": seed, "epoch": c["epoch"],
                  "wall_seconds": c["wall_seconds"], "test_accuracy": c["accuracy"],
                  "returned": c["returned"]} for c in checks]
    with open(out / "time_to_accuracy.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args, out / "time_to_accuracy.png", budget)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        print(f"budget {budget} prune epochs (--scale {args.scale:g}), checks every "
              f"{args.check:g} epochs, {args.trials} tuning trials per (method, level), seeds "
              f"{args.seeds}, {params.execution.threads} thread(s) x {args.workers} workers")
        summary(rows, args)
    print(text.getvalue())
    (out / "summary.txt").write_text(text.getvalue())
    print(f"\nrows: {out / 'time_to_accuracy.csv'}; plot: {out / 'time_to_accuracy.png'}")


def tune(name: str, level: float, base: dict, budget: int, args, n_train: int, run_all,
         out: Path) -> dict:
    """``args.trials`` TPE trials in rounds of ``args.workers``; the best trial's knobs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"tta-{name}-{level:g}x-scale{args.scale:g}", direction="maximize",
        storage=f"sqlite:///{(out / 'tuning.db').resolve()}", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=max(1, args.trials // 2)))
    done = len([t for t in study.trials if t.state.is_finished()])
    knobs = space(name, args.scale)
    while done < args.trials:
        batch = [study.ask() for _ in range(min(args.workers, args.trials - done))]
        configs = [configure(name, base, suggest(t, knobs), budget, args.scale, n_train)
                   for t in batch]
        results = run_all([(name, cfg, TUNING_SEED, 0, "val") for cfg in configs])
        for trial, checks in zip(batch, results, strict=True):
            value = checks[-1]["accuracy"]
            study.tell(trial, value if math.isfinite(value) else 0.0)
        done += len(batch)
    return dict(study.best_params)


def _mean_band(rows: list[dict], x: str) -> tuple[list[float], list[float], list[float],
                                                   list[float]]:
    """Per check index: mean x, mean accuracy, min and max accuracy over seeds."""
    by_seed: dict[int, list[dict]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], []).append(r)
    n = min(len(v) for v in by_seed.values())
    xs, mean, low, high = [], [], [], []
    for i in range(n):
        points = [v[i] for v in by_seed.values()]
        xs.append(statistics.fmean(p[x] for p in points))
        acc = [100 * p["test_accuracy"] for p in points]
        mean.append(statistics.fmean(acc))
        low.append(min(acc))
        high.append(max(acc))
    return xs, mean, low, high


def plot(rows: list[dict], args, path: Path, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.levels), 2, figsize=(11, 4 * len(args.levels)),
                             squeeze=False)
    for i, level in enumerate(args.levels):
        for j, (x, label) in enumerate((("epoch", "epochs trained (prune phase)"),
                                        ("wall_seconds", "training seconds"))):
            ax = axes[i][j]
            for name in args.methods:
                mine = [r for r in rows if r["method"] == name and r["level"] == level]
                xs, mean, low, high = _mean_band(mine, x)
                line, = ax.plot(xs, mean, marker="o", ms=3, label=name)
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy after 1 retrain epoch (%)")
            ax.set_title(f"{level:g}x ({100 * (1 - 1 / level):.2f}% sparse), budget {budget} "
                         f"epochs, seeds {','.join(map(str, args.seeds))}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def first_reach(rows: list[dict], target: float) -> dict | None:
    for r in rows:
        if r["test_accuracy"] >= target:
            return r
    return None


def paired(a: list[float], b: list[float], below: str = "sas_admm faster",
           above: str = "sas_admm slower") -> str:
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        return "n/a (fewer than 2 seeds)"
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_quantile(0.95, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    verdict = "within noise" if mean - half <= 0 <= mean + half else (
        below if mean + half < 0 else above)
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] ({verdict})"


def summary(rows: list[dict], args) -> None:
    """Per level and target: epochs and seconds to reach it, and the paired differences."""
    for level in args.levels:
        at = [r for r in rows if r["level"] == level]
        series = {(name, s): [r for r in at if r["method"] == name and r["seed"] == s]
                  for name in args.methods for s in args.seeds}
        finals = {name: [100 * series[name, s][-1]["test_accuracy"] for s in args.seeds]
                  for name in args.methods}
        print(f"\n{level:g}x, final test accuracy after the budget (%, mean ± std over seeds):")
        for name in args.methods:
            sd = statistics.stdev(finals[name]) if len(finals[name]) > 1 else 0.0
            print(f"  {name}: {statistics.fmean(finals[name]):.2f} ± {sd:.2f}")
        for other in ("admm", "admm_l1_sgd", "gmp"):
            if "sas_admm" in finals and other in finals:
                print(f"  sas_admm - {other}, final test accuracy (pp), paired: " + paired(
                    finals["sas_admm"], finals[other], "sas_admm lower", "sas_admm higher"))
        means = {name: statistics.fmean(v) / 100 for name, v in finals.items()}
        targets = {"the lowest final mean": min(means.values()),
                   "the highest final mean - 1 pp": max(means.values()) - 0.01}
        if "gmp" in means:
            targets["gmp's final mean"] = means["gmp"]
        for label, target in targets.items():
            print(f"\n{level:g}x, target {100 * target:.2f}% ({label}): epochs | seconds to "
                  "reach it, per seed (- = not within the budget)")
            reach = {(name, s): first_reach(series[name, s], target)
                     for name in args.methods for s in args.seeds}
            for name in args.methods:
                cells = [reach[name, s] for s in args.seeds]
                text = ", ".join("-" if c is None else f"{c['epoch']:g} | {c['wall_seconds']:.1f}"
                                 for c in cells)
                print(f"  {name}: {text}")
            for other in ("admm", "admm_l1_sgd"):
                if "sas_admm" not in args.methods or other not in args.methods:
                    continue
                both = [s for s in args.seeds if reach["sas_admm", s] and reach[other, s]]
                if len(both) < 2:
                    print(f"  sas_admm - {other}: fewer than 2 seeds where both reach it")
                    continue
                for x in ("epoch", "wall_seconds"):
                    print(f"  sas_admm - {other}, {x} to target, seeds {both}: " + paired(
                        [reach["sas_admm", s][x] for s in both],
                        [reach[other, s][x] for s in both]))


if __name__ == "__main__":
    main()
