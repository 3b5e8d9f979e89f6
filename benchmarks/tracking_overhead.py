"""Live MLflow tracking's cost per epoch: epoch time with a live run over without, same process.

A stage's worker opens the run's MLflow run at training start and hands every epoch's row to it
(`sparsebench.tracking.runs.LiveRun`: the epoch only queues the row, a background thread sends it).
This trains LeNet-300-100 for ``--epochs`` epochs with the default suite's pretrain optimizer,
with and without a live run (opened at the start of the fit, as in a stage), interleaved, same
process, and reports the ratio of the medians of the epoch time (the fit's wall time over its
epochs: training, the per-epoch validation and the hook). The run's end (final metrics,
artifacts) comes after the last epoch and is timed on its own. Target: ratio <= 1.02.

    python benchmarks/tracking_overhead.py [--rounds 5] [--epochs 3] [--real] [--uri URI]

``--uri`` tracks to that store or server (default: a fresh SQLite store in a temp dir, the
project's default kind of store).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from epoch_speed import data, epoch_arguments, interleaved

from sparsebench.core.models import build_model
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.train import Phase, fit
from sparsebench.tracking.runs import LiveRun, Records, RunInfo, client_for

OPTIM = OptimizerParams(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
ENDS: list[float] = []


def run(live: LiveRun | None, epochs: int, x, y, vx, vy, seed: int) -> float:
    """Seconds per epoch of one fit (with ``live`` started at its start and ended after it)."""
    torch.manual_seed(seed)
    model = build_model("mlp")
    phase = Phase(epochs, 128, OPTIM, "train")
    start = time.perf_counter()
    if live is not None:
        live.start()
    curves = fit(model, (x, y), (vx, vy), phase, generator=torch.Generator().manual_seed(seed),
                 device=torch.device("cpu"), progress=False,
                 on_epoch=None if live is None else (lambda row: live.epoch("train", row)))
    seconds = (time.perf_counter() - start) / epochs
    if live is not None:
        ending = time.perf_counter()
        final = {"val_accuracy": curves[-1]["val_accuracy"]}
        error = live.finish(Records({"train": curves}, final))
        assert error is None, error
        ENDS.append(time.perf_counter() - ending)
    return seconds


def main() -> None:
    parser = epoch_arguments(__doc__)
    parser.set_defaults(rounds=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--uri", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads or 1)  # the pipeline's runs use execution.threads: 1
    x, y, vx, vy = data(args.real, args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.uri or f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        _, experiment = client_for(uri, "tracking-overhead")

        def live(r: int) -> LiveRun:
            info = RunInfo(uri, experiment, f"round{r}", {"fingerprint": f"bench-{time.time()}"},
                           {"lr": OPTIM.lr, "epochs": args.epochs})
            return LiveRun(info)

        medians = interleaved(args.rounds, {
            "plain": lambda r: run(None, args.epochs, x, y, vx, vy, r),
            "live": lambda r: run(live(r), args.epochs, x, y, vx, vy, r)})
    plain, tracked = medians["plain"], medians["live"]
    print(f"LeNet-300-100, {len(y)} samples, {args.epochs} epochs a fit, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads; store {args.uri or 'SQLite (temp dir)'}")
    print(f"epoch without tracking:   median {plain:.3f} s")
    print(f"epoch with a live run:    median {tracked:.3f} s")
    print(f"ratio live/plain: {tracked / plain:.3f}  (target <= 1.02)")
    print(f"end of run (final metrics, wait for the thread): median "
          f"{1000 * statistics.median(ENDS[1:] or ENDS):.0f} ms, once per run")


if __name__ == "__main__":
    main()
