"""The project's training epoch against a bare PyTorch loop, same process, interleaved.

Both sides train LeNet-300-100 for one epoch on the same in-memory MNIST-shaped tensors with
the same batch size and SGD settings, then measure validation accuracy once (the project's
`fit` does this every epoch, so the bare loop does it too). Rounds alternate which side goes
first; the figure is the ratio of the medians.

    python benchmarks/epoch_speed.py [--rounds 7] [--samples 55000] [--real]

``--real`` uses the prepared MNIST splits (data/prepared/splits.safetensors) instead of random
tensors of the same shape; the speed does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparsebench.core.models import build_model
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.train import Phase, fit
from sparsebench.data import load_splits

BATCH = 128
OPTIM = OptimizerParams(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="cosine")


def bare_epoch(model, x, y, vx, vy, generator, optimizer: str = "sgd") -> float:
    """The plainest loop a user would write: randperm, slice, step, then one val pass.
    ``optimizer``: "sgd" (Nesterov momentum, as `OPTIM`) or "adam" (torch's defaults, lr 1e-3,
    as the default suite's ADMM W-steps)."""
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=OPTIM.lr, momentum=OPTIM.momentum,
                              nesterov=True, weight_decay=OPTIM.weight_decay)
    model.train()
    perm = torch.randperm(len(y), generator=generator)
    for i in range(0, len(y), BATCH):
        idx = perm[i : i + BATCH]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return (model(vx).argmax(1) == vy).float().mean().item()


def project_epoch(model, x, y, vx, vy, generator) -> float:
    curves = fit(model, (x, y), (vx, vy), Phase(1, BATCH, OPTIM), generator=generator,
                 device=torch.device("cpu"), progress=False)
    return curves[-1]["val_accuracy"]


def data(real: bool, samples: int):
    if real:
        splits = load_splits("data/prepared/splits.safetensors", ("train", "val"))
        (x, y), (vx, vy) = splits["train"], splits["val"]
        return x[:samples], y[:samples], vx, vy
    g = torch.Generator().manual_seed(0)
    def draw(n: int):
        return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)

    return (*draw(samples), *draw(5000))


def epoch_arguments(doc: str) -> argparse.ArgumentParser:
    """The options every epoch benchmark takes: --rounds, --samples, --real."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=55000)
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (the pipeline's runs use execution.threads: 1)")
    return parser


def interleaved(rounds: int, sides: dict[str, Callable[[int], float]]) -> dict[str, float]:
    """Median seconds of each side over ``rounds`` rounds after one warm-up round; the order of
    the sides alternates from round to round. ``sides[name](round)`` returns its seconds."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):
        for name in (names if r % 2 else names[::-1]):
            seconds = sides[name](r)
            if r:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    args = epoch_arguments(__doc__).parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y, vx, vy = data(args.real, args.samples)
    times = {"bare": [], "project": []}
    runners = {"bare": bare_epoch, "project": project_epoch}
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        order = ("bare", "project") if r % 2 else ("project", "bare")
        for side in order:
            torch.manual_seed(r)
            model = build_model("mlp")
            start = time.perf_counter()
            runners[side](model, x, y, vx, vy, torch.Generator().manual_seed(r))
            if r:
                times[side].append(time.perf_counter() - start)
    bare, project = statistics.median(times["bare"]), statistics.median(times["project"])
    print(f"LeNet-300-100, {len(y)} samples, batch {BATCH}, {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"bare loop epoch:    median {bare:.3f} s")
    print(f"project epoch:      median {project:.3f} s")
    print(f"ratio project/bare: {project / bare:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
