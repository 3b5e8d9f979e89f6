"""ADMM's W-step against plain training: one epoch with the penalty
sum_i (rho / 2) ||W_i - Z_i + U_i||^2 added to every minibatch loss, against the same epoch
without it (`train.fit` both times), same process, interleaved, ratio of the medians.

    python benchmarks/admm_overhead.py [--rounds 7] [--real]

LeNet-300-100 on MNIST-shaped data (``--real``: the prepared MNIST splits), Adam, batch 128,
ADMM at 95% sparsity per layer, rho 1e-3. Target: ratio <= 1.10.
"""

from __future__ import annotations

import time

import torch
from epoch_speed import data, epoch_arguments, interleaved

from sparsebench.core.models import build_model
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.train import Phase, fit
from sparsebench.methods.admm import ADMM

PHASE = Phase(1, 128, OptimizerParams(name="adam", lr=1e-3, schedule="constant"))


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
    args = epoch_arguments(__doc__).parse_args()
    x, y, vx, vy = data(args.real, args.samples)
    medians = interleaved(args.rounds, {
        "plain": lambda r: epoch(False, x, y, vx, vy, r),
        "admm": lambda r: epoch(True, x, y, vx, vy, r)})
    plain, admm = medians["plain"], medians["admm"]
    print(f"LeNet-300-100, {len(y)} samples, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"epoch without penalty: median {plain:.3f} s")
    print(f"epoch with ADMM penalty: median {admm:.3f} s")
    print(f"ratio admm/plain: {admm / plain:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
