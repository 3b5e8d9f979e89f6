"""A whole training step with each sparsity optimizer against plain SGD, same process, interleaved.

One step is ``zero_grad``, forward, cross-entropy, backward and ``step()`` on a fixed random
batch: LeNet-300-100 (``build_model("mlp")``, batch 128) and LeNet-5
(``build_model("lenet5")``, batch 64), 1x28x28 inputs. The baseline is
``torch.optim.SGD(model.parameters(), lr=...)``: plain, lr only (no momentum, no weight decay;
on CPU its default is the single-tensor path). Every optimizer steps its own copy of the same
initial model. Each round times one step of every optimizer, in alternating order (forward in
even rounds, reversed in odd ones); the figure is the median over the rounds after warm-up,
and the ratio is that median over SGD's.

"ratio" is median(optimizer) / median(SGD); "paired" is the median over rounds of the ratio
to SGD's step in the same round (less sensitive to other processes' load); the target is
checked on "ratio".

Two PyTorch optimizers are timed alongside for scale, with no target: SGD with momentum and
Adam (fused), whose state and passes LinBreg with momentum and AdaBreg carry before any
sparsity. After each model, the l1 prox written five ways is timed on copies of all its
parameters (the choice behind `sparsebench.optim.prox.soft_threshold`).

Memory is the optimizer's state tensors (``optimizer.state``, bytes) divided by the model's
parameter count; Python-number state (step counts, gRDA's threshold) is not counted.

    python benchmarks/optim_step.py [--rounds 200] [--warmup 20] [--models mlp lenet5]
        [--threads N] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.models import build_model
from sparsebench.optim import GRDA, AdaBreg, LinBreg, ProxSGD, param_groups

LR = 0.01
BATCH = {"mlp": 128, "lenet5": 64}
TARGET = {"mlp": 1.10, "lenet5": 1.05}

#: name -> builder(model) -> optimizer. The registered optimizers in the settings a run of
#: the benchmark would use (Bregman and ProxSGD through param_groups: biases unregularised).
CANDIDATES: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=LR),
    "grda": lambda m: GRDA(m.parameters(), lr=LR, c=0.005, mu=0.55),
    "linbreg": lambda m: LinBreg(param_groups(m, lam=0.5), lr=LR),
    "linbreg momentum=0.9": lambda m: LinBreg(param_groups(m, lam=0.5), lr=LR, momentum=0.9),
    "linbreg l12 groups": lambda m: LinBreg(
        param_groups(m, lam=0.5, reg_linear="l12_row", reg_conv="l12_kernel"), lr=LR
    ),
    "adabreg": lambda m: AdaBreg(param_groups(m, lam=0.1), lr=1e-3),
    "proxsgd": lambda m: ProxSGD(param_groups(m, lam=1e-4), lr=LR),
}

#: PyTorch's own optimizers with the same state, for scale (no target): what momentum and
#: Adam cost before any sparsity.
REFERENCES: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "(ref) torch SGD mom=0.9": lambda m: torch.optim.SGD(m.parameters(), lr=LR, momentum=0.9),
    "(ref) torch Adam fused": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, fused=True),
}


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for state in opt.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


def bench_model(name: str, rounds: int, warmup: int, clock: Callable[[], float]) -> list[tuple]:
    torch.manual_seed(0)
    base = build_model(name)
    x = torch.randn(BATCH[name], 1, 28, 28)
    y = torch.randint(0, 10, (BATCH[name],))
    runs = []
    for key, make in {**CANDIDATES, **REFERENCES}.items():
        model = copy.deepcopy(base)
        runs.append((key, model, make(model)))
    times: dict[str, list[float]] = {key: [] for key, _, _ in runs}
    for r in range(warmup + rounds):
        order = runs if r % 2 == 0 else runs[::-1]
        for key, model, opt in order:
            start = clock()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            elapsed = clock() - start
            if r >= warmup:
                times[key].append(elapsed)
    n_params = sum(p.numel() for p in base.parameters())
    sgd = statistics.median(times["sgd"])
    rows = []
    for key, _, opt in runs:
        median = statistics.median(times[key])
        # the same ratio taken round by round, against SGD's step in that round: robust to
        # load that changes between rounds (other processes on the machine)
        paired = statistics.median(t / s for t, s in zip(times[key], times["sgd"], strict=True))
        rows.append((key, median * 1e3, median / sgd, paired, state_bytes(opt) / n_params))
    return rows


def _foreach_soft_threshold(xs: list[torch.Tensor], t: float) -> None:
    signs = torch._foreach_sign(xs)
    mags = torch._foreach_abs(xs)
    torch._foreach_sub_(mags, t)
    torch._foreach_clamp_min_(mags, 0.0)
    torch._foreach_mul_(mags, signs)
    torch._foreach_copy_(xs, mags)


#: Ways to write the l1 prox (soft threshold) in place over a list of tensors.
PROX_VARIANTS: dict[str, Callable[[list[torch.Tensor], float], None]] = {
    "softshrink(out=x) [used]": lambda xs, t: [torch._C._nn.softshrink(x, t, out=x) for x in xs],
    "F.softshrink + copy_": lambda xs, t: [x.copy_(F.softshrink(x, t)) for x in xs],
    "torch._foreach_*": _foreach_soft_threshold,
    "sign * clamp(|x| - t, 0)": lambda xs, t: [
        x.copy_(torch.sign(x) * torch.clamp(x.abs() - t, min=0)) for x in xs
    ],
    "x - clamp(x, -t, t)": lambda xs, t: [x.sub_(x.clamp(-t, t)) for x in xs],
}


def bench_prox(name: str, rounds: int, sgd_step_ms: float, clock: Callable[[], float]) -> None:
    """Each l1-prox variant on copies of all the model's parameters, interleaved."""
    torch.manual_seed(0)
    xs = [p.detach().clone() for p in build_model(name).parameters()]
    times: dict[str, list[float]] = {key: [] for key in PROX_VARIANTS}
    keys = list(PROX_VARIANTS)
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            start = clock()
            PROX_VARIANTS[key](xs, 1e-6)
            times[key].append(clock() - start)
    print(f"  l1 prox on all parameters, ms per call and % of an SGD step ({sgd_step_ms:.3f} ms):")
    for key in keys:
        ms = statistics.median(times[key]) * 1e3
        print(f"    {key:<28}{ms:>8.3f} ms{100 * ms / sgd_step_ms:>8.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet5"], choices=sorted(BATCH))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter; cpu: time.thread_time (with --threads 1, CPU time is "
        "not inflated while other processes hold the cores)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds after {args.warmup} warm-up, {args.clock} clock, median per step"
    )
    for name in args.models:
        n_params = sum(p.numel() for p in build_model(name).parameters())
        label = {"mlp": "LeNet-300-100", "lenet5": "LeNet-5"}[name]
        print(
            f"\n{label} ({name}, {n_params:,} parameters, batch {BATCH[name]}), "
            f"target ratio <= {TARGET[name]:.2f}"
        )
        print(f"  {'optimizer':<22}{'ms/step':>9}{'ratio':>8}{'paired':>8}{'state B/param':>15}")
        rows = bench_model(name, args.rounds, args.warmup, clock)
        for key, ms, ratio, paired, per_param in rows:
            verdict = "" if key not in CANDIDATES or key == "sgd" else "met"
            if verdict and ratio > TARGET[name]:
                verdict = "MISSED"
            print(f"  {key:<22}{ms:>9.3f}{ratio:>8.3f}{paired:>8.3f}{per_param:>15.2f}  {verdict}")
        bench_prox(name, args.rounds, rows[0][1], clock)


if __name__ == "__main__":
    main()
