"""Each sparsity optimizer's step against the torch optimizer of its family, same process.

``--scope train`` (the default, the figure the targets apply to) times a whole training step
as a training run takes it: ``zero_grad``, forward, cross-entropy, backward and ``step()`` on a
fixed batch of 128 MNIST-shaped inputs (1x28x28), on LeNet-300-100 (``build_model("mlp")``:
784-300-100-10, 266,610 parameters). ``--scope step`` times ``optimizer.step()`` alone, with
everything it does (the gradient or moment step, the prox, its bookkeeping): there the
gradients are fixed, one random set (``randn * 1e-2``, seed 0) copied into every model's
``.grad`` once and never zeroed, so both sides step the same parameters with the same
gradients. Each optimizer steps its own copy of the same initial model. The baselines:

* gRDA, ProxSGD, LinBreg: ``torch.optim.SGD(lr)`` (no momentum; on CPU the default is its
  single-tensor path);
* LinBreg / ProxSGD with momentum b: ``torch.optim.SGD(lr, momentum=b)``;
* AdaBreg: ``torch.optim.Adam(lr, betas, foreach=True, fused=False)``;
* the l1,2 group prox (LinBreg and ProxSGD with ``reg_linear="l12_row"``): ``SGD(lr)``.

The sparsity optimizers run as a training run builds them (`param_groups`: weights
regularised, biases in an unregularised group; gRDA on all parameters, as its method does).

Measurement: torch.utils.benchmark.Timer (garbage collector off), ``--block`` steps per
measurement. Every round measures every pair, baseline and candidate back to back, the
baseline first in even rounds and second in odd ones, so slow drifts of the machine's load
hit both sides alike. Per pair: the median time per step of each side over the rounds after
warm-up, and the median over rounds of the per-round ratio candidate / baseline ("ratio",
the figure checked against the target: a round's two measurements are a few milliseconds
apart, so load from other processes largely cancels). The ratio of the two medians is
printed beside it ("ratio of medians") as a check.

Targets (issue 14, item 5): ratio <= 1.05, and <= 1.10 for the l1,2 group prox, on
LeNet-300-100, for the training step (``--scope train``): the step a user's epoch is made of.
The optimizer step alone (``--scope step``) is printed against the same numbers for
information: SGD's step is one pass over the parameters, and a sparsity optimizer needs a
second (the prox, or a second state tensor), so no eager PyTorch rewrite gets that ratio near
1 (the floors below say how near). Other models (``--models lenet5 resnet20``: 8 and 59
parameter tensors against LeNet-300-100's 6) print the same table against the same targets, for
information.

Below the table, the floors: minimal optimizers whose step runs only the elementwise kernels
each family's update needs (one ``torch._foreach_add_`` for the gradient step, then the prox
per tensor), on fixed tensors, timed the same way against SGD's whole step; both sides are the
optimizer step alone, whatever ``--scope``, since that is the ratio they bound. They pay the
base class's step machinery (hooks, profiler mark, no_grad) like every torch optimizer and
nothing else; a floor above a target means that no rewrite in PyTorch's eager operations
meets it. ``--prox-variants`` also times five ways of writing the l1 prox over all the
parameters (the choice behind `sparsebench.optim.prox.soft_threshold`).

    python benchmarks/optim_step.py [--threads 1] [--rounds 60] [--warmup 5] [--block 50]
        [--clock wall|cpu] [--models mlp lenet5 resnet20] [--only NAME ...] [--no-floor]
        [--prox-variants]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.benchmark import Timer

from sparsebench.core.models import build_model
from sparsebench.optim import GRDA, AdaBreg, LinBreg, ProxSGD, group_soft_threshold, param_groups

LR = 0.01
MOMENTUM = 0.9
BETAS = (0.9, 0.999)
ADAM_LR = 1e-3
LABEL = {"mlp": "LeNet-300-100", "lenet5": "LeNet-5", "resnet20": "ResNet-20"}
INPUT = {"mlp": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}

Builder = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass(frozen=True)
class Case:
    name: str
    candidate: Builder
    baseline_name: str
    baseline: Builder
    target: float


def sgd(momentum: float = 0.0) -> Builder:
    return lambda m: torch.optim.SGD(m.parameters(), lr=LR, momentum=momentum)


def adam(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(m.parameters(), lr=ADAM_LR, betas=BETAS, foreach=True, fused=False)


#: The l1,2 group regulariser of each kind of layer: rows of linear weights, conv kernels.
GROUP_REGS = {"reg_linear": "l12_row", "reg_conv": "l12_kernel"}


CASES: list[Case] = [
    Case("grda", lambda m: GRDA(m.parameters(), lr=LR, c=0.005, mu=0.55), "SGD", sgd(), 1.05),
    Case(
        "proxsgd",
        lambda m: ProxSGD(param_groups(m, lam=1e-4), lr=LR),
        "SGD",
        sgd(),
        1.05,
    ),
    Case(
        "proxsgd momentum=0.9",
        lambda m: ProxSGD(param_groups(m, lam=1e-4), lr=LR, momentum=MOMENTUM),
        "SGD momentum=0.9",
        sgd(MOMENTUM),
        1.05,
    ),
    Case("linbreg", lambda m: LinBreg(param_groups(m, lam=0.5), lr=LR), "SGD", sgd(), 1.05),
    Case(
        "linbreg momentum=0.9",
        lambda m: LinBreg(param_groups(m, lam=0.5), lr=LR, momentum=MOMENTUM),
        "SGD momentum=0.9",
        sgd(MOMENTUM),
        1.05,
    ),
    Case(
        "adabreg",
        lambda m: AdaBreg(param_groups(m, lam=0.1), lr=ADAM_LR, betas=BETAS),
        "Adam foreach",
        adam,
        1.05,
    ),
    Case(
        "linbreg l12",
        lambda m: LinBreg(param_groups(m, lam=0.5, **GROUP_REGS), lr=LR),
        "SGD",
        sgd(),
        1.10,
    ),
    Case(
        "proxsgd l12",
        lambda m: ProxSGD(param_groups(m, lam=1e-4, **GROUP_REGS), lr=LR),
        "SGD",
        sgd(),
        1.10,
    ),
]


def model_with_grads(base: nn.Module, grads: list[torch.Tensor]) -> nn.Module:
    model = copy.deepcopy(base)
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    return model


def fixed_grads(model: nn.Module) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn_like(p) * 1e-2 for p in model.parameters()]


def make_timer(stmt: str, env: dict, clock: Callable[[], float]) -> Timer:
    return Timer(stmt, globals=env, timer=clock, num_threads=torch.get_num_threads())


BATCH = 128


def step_alone(opt: torch.optim.Optimizer, clock: Callable[[], float]) -> Timer:
    """``opt.step()`` and nothing else, on the gradients the parameters hold."""
    return make_timer("opt.step()", {"opt": opt}, clock)


def step_timer(opt: torch.optim.Optimizer, model: nn.Module, shape: tuple[int, ...],
               scope: str, clock: Callable[[], float]) -> Timer:
    """``opt.step()`` alone (scope ``step``), or a whole training step (``train``)."""
    if scope == "step":
        return step_alone(opt, clock)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, *shape, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
    env = {"opt": opt, "model": model, "x": x, "y": y, "F": F}
    return make_timer("opt.zero_grad()\nF.cross_entropy(model(x), y).backward()\nopt.step()",
                      env, clock)


def interleave(
    timers: dict[str, Timer], rounds: int, warmup: int, block: int
) -> dict[str, list[float]]:
    """Seconds per call of each timer, round by round: the keys in order in even rounds and
    in reverse in odd ones (neighbours stay neighbours, each first half of the time)."""
    times: dict[str, list[float]] = {key: [] for key in timers}
    keys = list(timers)
    for r in range(warmup + rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            seconds = timers[key].timeit(block).mean
            if r >= warmup:
                times[key].append(seconds)
    return times


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """The median over rounds of the ratio to the reference's time in the same round."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


def bench_model(name: str, cases: list[Case], args: argparse.Namespace) -> None:
    """Each case's candidate against its baseline on model ``name``: the table."""
    base = build_model(name)
    grads = fixed_grads(base)
    timers = {}
    for i, case in enumerate(cases):  # baseline and candidate of a case are neighbours
        for side, build in (("base", case.baseline), ("cand", case.candidate)):
            model = model_with_grads(base, grads)
            timers[i, side] = step_timer(build(model), model, INPUT[name], args.scope,
                                         args.clock_fn)
    times = interleave(timers, args.rounds, args.warmup, args.block)
    print(
        f"  {'optimizer':<22}{'baseline':<18}{'base us':>9}{'opt us':>9}"
        f"{'ratio':>8}{'of medians':>11}{'target':>8}  verdict"
    )
    for i, case in enumerate(cases):
        b, c = statistics.median(times[i, "base"]), statistics.median(times[i, "cand"])
        ratio = paired_ratio(times[i, "cand"], times[i, "base"])
        print(
            f"  {case.name:<22}{case.baseline_name:<18}{b * 1e6:>9.1f}{c * 1e6:>9.1f}"
            f"{ratio:>8.3f}{c / b:>11.3f}{case.target:>8.2f}  "
            f"{'PASS' if ratio <= case.target else 'MISS'}"
        )


@dataclass
class Tensors:
    """Copies of a model's parameters (``P``), fixed gradients (``G``), a second state tensor
    per parameter (``A``, as gRDA's accumulator or LinBreg's ``v``) and the weights (``W``,
    ProxSGD's regularised group)."""

    P: list[torch.Tensor]
    G: list[torch.Tensor]
    A: list[torch.Tensor]
    W: list[torch.Tensor]


def _one_pass(t: Tensors) -> None:
    torch._foreach_add_(t.P, t.G, alpha=-LR)


def _two_passes_to_p(t: Tensors) -> None:
    torch._foreach_add_(t.A, t.G, alpha=-LR)
    for p, a in zip(t.P, t.A, strict=True):
        torch._C._nn.softshrink(a, 1e-6, out=p)


def _two_passes_in_place(t: Tensors) -> None:
    torch._foreach_add_(t.P, t.G, alpha=-LR)
    for w in t.W:
        torch._C._nn.softshrink(w, 1e-6, out=w)


def _group_prox_passes(t: Tensors) -> None:
    torch._foreach_add_(t.P, t.G, alpha=-LR)
    for w in t.W:
        group_soft_threshold(w, 1e-6, "l12_row", out=w)


#: The elementwise kernels each family's update needs, over all the parameters, with nothing
#: else: no state lookups, no checks. Each runs as the whole step of a `BareOptimizer`, so
#: that it pays the machinery every torch optimizer's step pays (hooks, profiler mark,
#: no_grad) and nothing more: what no rewrite in eager PyTorch can go below.
FLOORS: dict[str, Callable[[Tensors], None]] = {
    "nothing (the base class's step machinery)": lambda t: None,
    "p -= lr g (1 pass: SGD's arithmetic)": _one_pass,
    "a -= lr g; p = S(a) (2 passes: gRDA, LinBreg)": _two_passes_to_p,
    "p -= lr g; p = S(p) (2 passes: ProxSGD)": _two_passes_in_place,
    "p -= lr g; p = group prox(p) (3 passes: l1,2)": _group_prox_passes,
}


class BareOptimizer(torch.optim.Optimizer):
    """An optimizer whose step runs ``kernels`` on fixed tensors, and nothing else."""

    def __init__(self, model: nn.Module, kernels: Callable[[Tensors], None]) -> None:
        super().__init__(model.parameters(), {})
        params = [p.detach() for p in model.parameters()]
        grads = [p.grad for p in model.parameters()]
        weights = [p for p in params if p.ndim > 1]
        self.tensors = Tensors(params, grads, [p.clone() for p in params], weights)
        self.kernels = kernels

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        self.kernels(self.tensors)


def against_sgd(name: str, title: str, timers: dict[str, Timer], args: argparse.Namespace) -> None:
    """Time ``timers`` interleaved with SGD's whole step (the optimizer step alone, on fixed
    gradients) on model ``name``; print the ratios."""
    base = build_model(name)
    sgd_step = step_alone(sgd()(model_with_grads(base, fixed_grads(base))), args.clock_fn)
    times = interleave({"SGD": sgd_step, **timers}, args.rounds, args.warmup, args.block)
    print(
        f"\n  {title}, against SGD's whole optimizer step "
        f"({statistics.median(times['SGD']) * 1e6:.1f} us), ratio paired per round:"
    )
    for key in timers:
        us = statistics.median(times[key]) * 1e6
        print(f"    {key:<48}{us:>8.1f} us{paired_ratio(times[key], times['SGD']):>8.3f}")


def bench_floor(name: str, args: argparse.Namespace) -> None:
    """A `BareOptimizer` per entry of `FLOORS` against SGD's step."""
    base = build_model(name)
    grads = fixed_grads(base)
    timers = {
        key: step_alone(BareOptimizer(model_with_grads(base, grads), kernels), args.clock_fn)
        for key, kernels in FLOORS.items()
    }
    against_sgd(name, "floors: optimizers that run only the kernels", timers, args)


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


def bench_prox(name: str, args: argparse.Namespace) -> None:
    """Each l1-prox variant on copies of all the model's parameters against SGD's step."""
    xs = [p.detach().clone() for p in build_model(name).parameters()]
    timers = {
        key: make_timer("fn(xs, 1e-6)", {"fn": fn, "xs": xs}, args.clock_fn)
        for key, fn in PROX_VARIANTS.items()
    }
    against_sgd(name, "the l1 prox over all parameters, five ways", timers, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--rounds", type=int, default=60, help="measured rounds (60)")
    parser.add_argument("--warmup", type=int, default=5, help="rounds left out (5)")
    parser.add_argument("--block", type=int, default=50, help="steps per measurement (50)")
    parser.add_argument("--models", nargs="+", default=["mlp"], choices=sorted(LABEL))
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these candidates")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter; cpu: time.thread_time (with one thread, CPU time is "
        "not inflated while other processes hold the cores)",
    )
    parser.add_argument("--scope", choices=("train", "step"), default="train",
                        help="train: zero_grad, forward, backward and step (the targets); "
                        "step: optimizer.step() alone")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare-kernel floors")
    parser.add_argument("--prox-variants", action="store_true", help="also time l1-prox variants")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.clock_fn = time.perf_counter if args.clock == "wall" else time.thread_time
    cases = [c for c in CASES if not args.only or c.name in args.only]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} clock; "
        f"{args.rounds} rounds after {args.warmup} warm-up, {args.block} steps per measurement"
    )
    for name in args.models:
        n_params = sum(p.numel() for p in build_model(name).parameters())
        what = "training step, batch 128" if args.scope == "train" else "optimizer step only"
        print(f"\n{LABEL[name]} ({name}, {n_params:,} parameters), {what}")
        if cases:
            bench_model(name, cases, args)
        if not args.no_floor:
            bench_floor(name, args)
        if args.prox_variants:
            bench_prox(name, args)


if __name__ == "__main__":
    main()
