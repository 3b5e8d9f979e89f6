"""ADMM's W-step against plain training: one epoch with the penalty
sum_i (rho / 2) ||W_i - Z_i + U_i||^2 added to every minibatch loss, against the same epoch
without it (`train.fit` both times), same process, interleaved, ratio of the medians.

    python benchmarks/admm_overhead.py [--rounds 7] [--real]

LeNet-300-100 on MNIST-shaped data (``--real``: the prepared MNIST splits), Adam, batch 128,
ADMM at 95% sparsity per layer, rho 1e-3. Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from epoch_speed import data

from sparsebench.methods.admm import ADMM
from sparsebench.models import build_model
from sparsebench.train import OptimConfig, Phase, fit

PHASE = Phase(1, 128, OptimConfig(name="adam", lr=1e-3, schedule="constant"))


def epoch(with_penalty: bool, x, y, vx, vy, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_model("mlp")
    penalty_grad = None
    if with_penalty:
        admm = ADMM.for_model(model, sparsity=0.95, rho=1e-3)
        admm.step()  # a Z and U that are not the start
        penalty_grad = admm.add_penalty_grad  # what the admm method's W-step uses
    start = time.perf_counter()
    fit(model, (x, y), (vx, vy), PHASE, generator=torch.Generator().manual_seed(seed),
        device=torch.device("cpu"), after_backward=penalty_grad, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=55000)
    parser.add_argument("--real", action="store_true")
    args = parser.parse_args()
    x, y, vx, vy = data(args.real, args.samples)
    times = {False: [], True: []}
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        for side in ((False, True) if r % 2 else (True, False)):
            seconds = epoch(side, x, y, vx, vy, r)
            if r:
                times[side].append(seconds)
    plain, admm = statistics.median(times[False]), statistics.median(times[True])
    print(f"LeNet-300-100, {len(y)} samples, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"epoch without penalty: median {plain:.3f} s")
    print(f"epoch with ADMM penalty: median {admm:.3f} s")
    print(f"ratio admm/plain: {admm / plain:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
