"""What tuning costs beyond training: Optuna and MLflow bookkeeping per trial, and what a second
worker buys on this machine. Both figures are ratios of runs made by this one invocation.

1. Bookkeeping share: a study with one worker and MLflow tracking on. Per trial, the compute is
   what the trial does for its figures (load the pretrained model, prune phase, masked
   retrain, validation; the ``seconds`` each trial records); the bookkeeping is everything else
   between the first trial's start and the last one's end (claim, stale-trial check, ask,
   sampling, tell, the nested MLflow run, user attributes). Share = bookkeeping / compute, over
   the trials after the first (the first pays one-time imports on both sides) and over all.
2. Throughput: the same study with two workers against one: trials per minute from the trials'
   own timestamps in the storage (steady state), and end to end (wall clock of the command,
   process start-up and imports included).

The trials are the default suite's (LeNet-300-100 on MNIST, params.yaml's method settings),
with the Pareto objective so that no trial is pruned and each does the same work. Run it from
the repository root after ``dvc repro`` (it needs data/prepared and runs/pretrain); it works in
a temporary folder and leaves the repository's tuned/, tuning/ and mlruns/ alone:

    python benchmarks/tune_overhead.py [--method gmp] [--trials 8] [--params PATH]
    python benchmarks/tune_overhead.py --toy     # tiny synthetic data: checks that it runs

``--params`` names the suite's params.yaml (default: the repository's); its prepared data and
pretrained models are the working directory's data/ and runs/pretrain.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def workspace(tmp: Path, toy: bool, params_file: Path) -> Path:
    """A workspace in ``tmp`` for the suite of ``params_file``: the working directory's data and
    pretrained models (linked), or tiny synthetic ones made here for ``--toy``."""
    ws = tmp / "ws"
    (ws / "runs").mkdir(parents=True)
    params = yaml.safe_load(params_file.read_text())
    if toy:
        # the suite's epoch budget counts minibatches of its own data: not of a few samples
        params.update(seeds=[0], device="cpu", budget=None)
        params["data"].update(dataset="synthetic", val_size=64)
        params["pretrain"].update(epochs=1, batch_size=32)
        params["retrain"].update(epochs=1, batch_size=32)
        params["methods"]["gmp"].update(epochs=2, end_epoch=1, frequency=2, batch_size=32)
    else:
        for part in ("data", "runs/pretrain"):
            if not (Path.cwd() / part).exists():
                sys.exit(f"tune_overhead: {part} is missing here; run it from the repository "
                         "root after dvc repro, or pass --toy")
        (ws / "data").symlink_to(Path.cwd() / "data")
        (ws / "runs" / "pretrain").symlink_to(Path.cwd() / "runs" / "pretrain")
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if toy:
        for stage in ("prepare", "pretrain"):
            cli(ws, tmp, stage)
    return ws


def cli(ws: Path, tmp: Path, *args: str) -> float:
    """Run ``sparsebench ARGS`` in ``ws`` with the stores under ``tmp``; its wall time."""
    env = {**os.environ, "SPARSEBENCH_ROOT": str(tmp)}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sparsebench", *args], cwd=ws, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"tune_overhead: sparsebench {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def study_figures(storage: str, name: str) -> dict[str, float]:
    """Compute and span of a study's complete trials, from the storage."""
    import optuna

    trials = sorted((t for t in optuna.load_study(study_name=name, storage=storage).trials
                     if t.state.name == "COMPLETE"), key=lambda t: t.datetime_start)

    def over(ts: list) -> dict[str, float]:
        span = (max(t.datetime_complete for t in ts)
                - min(t.datetime_start for t in ts)).total_seconds()
        return {"n": len(ts), "span": span, "compute": sum(t.user_attrs["seconds"] for t in ts)}

    return {"all": over(trials), "steady": over(trials[1:]) if len(trials) > 2 else over(trials)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="gmp", help="a key under methods: with a tune space")
    ap.add_argument("--trials", type=int, default=8, help="trials per study (default 8)")
    ap.add_argument("--toy", action="store_true", help="tiny synthetic data, to check it runs")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                    help="the suite's params.yaml (default: the repository's)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="tune-overhead-") as name:
        tmp = Path(name)
        ws = workspace(tmp, args.toy, args.params)
        storage = f"sqlite:///{tmp / 'optuna.db'}"
        runs = {}
        for workers in (1, 2):
            study = f"overhead-{workers}w"
            wall = cli(ws, tmp, "tune", "--method", args.method, "--objective", "pareto",
                       "--trials", str(args.trials), "--workers", str(workers),
                       "--storage", storage, "--study", study,
                       "--out", str(tmp / "tuning" / study))  # each study's files apart
            runs[workers] = {"wall": wall, **study_figures(storage, study)}

    one = runs[1]
    suite = ("toy data" if args.toy else "default suite: LeNet-300-100, MNIST"
             if args.params == ROOT / "params.yaml" else f"suite {args.params}")
    print(f"tune overhead: method {args.method}, {args.trials} trials per study ({suite}), "
          f"{os.cpu_count()} cores")
    for label, part in (("trials 2..N", one["steady"]), ("all trials", one["all"])):
        book = part["span"] - part["compute"]
        print(f"  bookkeeping / compute, 1 worker, {label}: {book / part['compute']:.2%} "
              f"({book / part['n']:.3f} s of bookkeeping per trial against "
              f"{part['compute'] / part['n']:.2f} s of compute; target <= 5%)")
    rate = {w: runs[w]["steady"]["n"] / runs[w]["steady"]["span"] * 60 for w in (1, 2)}
    print(f"  trials/min, steady state: 1 worker {rate[1]:.2f}, 2 workers {rate[2]:.2f}: "
          f"{rate[2] / rate[1]:.2f}x (target >= 1.6x)")
    end = {w: args.trials / runs[w]["wall"] * 60 for w in (1, 2)}
    print(f"  trials/min, end to end (start-up included): 1 worker {end[1]:.2f}, 2 workers "
          f"{end[2]:.2f}: {end[2] / end[1]:.2f}x")


if __name__ == "__main__":
    main()
