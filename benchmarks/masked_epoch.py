"""A masked training epoch against an unmasked one, same process, interleaved.

Three sides train LeNet-300-100 for one epoch with the project's `fit` (batch 128, SGD with
Nesterov momentum and weight decay, as `benchmarks/epoch_speed.py`):

- ``dense``: no masks, the floor;
- ``product``: 90%-sparse magnitude masks in ``torch.nn.utils.prune``'s own ``CustomFromMask``
  form, which multiplies ``weight_orig * weight_mask`` before every forward pass (and its
  gradient by the mask after it): what sparsebench did before `sparsity.ZeroedMask`;
  measured 2026-12-03 on the 2-core VM, 3 runs: ``zeroed`` 1.06, 1.15, 1.10x dense against
  ``product`` 1.14, 1.11, 1.08x: within the machine's noise;
- ``zeroed``: the same masks as `sparsity.apply_masks` applies them today (`ZeroedMask`: the
  forward takes ``weight_orig`` as it is, exactly zero where masked, and only the gradient is
  masked).

The figures are the medians over the rounds of the epoch's CPU seconds (``time.thread_time``:
one torch thread, so the other processes on a shared machine move them less than wall seconds),
as ratios to ``dense``. Each round also checks that
``product`` and ``zeroed`` end with the same weights, bit for bit.

    python benchmarks/masked_epoch.py [--rounds 7] [--samples 55000] [--real] [--threads 1]
"""

from __future__ import annotations

import time

import torch
from epoch_speed import BATCH, OPTIM, data, epoch_arguments, interleaved
from torch.nn.utils import prune

from sparsebench.core.metrics import prunable_modules
from sparsebench.core.models import build_model
from sparsebench.core.numerics import flush_subnormals
from sparsebench.core.sparsity import apply_masks, magnitude_masks
from sparsebench.core.train import Phase, fit

SPARSITY = 0.9


def product_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """The plain ``torch.nn.utils.prune`` form, ``weight_orig`` zeroed where masked as
    `apply_masks` does, so both sides train the same numbers."""
    for name, module in prunable_modules(model):
        prune.custom_from_mask(module, "weight", masks[name])
        with torch.no_grad():
            module.weight_orig.masked_fill_(~masks[name], 0.0)


def main() -> None:
    args = epoch_arguments(__doc__).parse_args()
    torch.set_num_threads(args.threads or 1)
    flush_subnormals(True)
    x, y, vx, vy = data(args.real, args.samples)
    finals: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def side(name: str):
        def run(r: int) -> float:
            torch.manual_seed(r)
            model = build_model("mlp")
            masks = magnitude_masks(model, SPARSITY)
            if name == "product":
                product_masks(model, masks)
            elif name == "zeroed":
                apply_masks(model, masks)
            start = time.thread_time()
            fit(model, (x, y), (vx, vy), Phase(1, BATCH, OPTIM),
                generator=torch.Generator().manual_seed(r), device=torch.device("cpu"),
                progress=False)
            if name != "dense":
                finals[name, r] = dict(model.state_dict())
            pair = finals.get(("product", r)), finals.get(("zeroed", r))
            if None not in pair:
                if not all(torch.equal(pair[0][k], v) for k, v in pair[1].items()):
                    raise SystemExit(f"round {r}: product and zeroed masks trained different "
                                     "weights")
                del finals["product", r], finals["zeroed", r]
            return time.thread_time() - start

        return run

    medians = interleaved(args.rounds, {n: side(n) for n in ("dense", "product", "zeroed")})
    print(f"LeNet-300-100, {len(y)} samples, batch {BATCH}, masks {SPARSITY:.0%} sparse, "
          f"{args.rounds} rounds, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, seconds in medians.items():
        print(f"{name:8s} epoch: median {seconds:.3f} s  "
              f"ratio to dense {seconds / medians['dense']:.3f}")
    print("product and zeroed: the same weights, bit for bit, in every round")


if __name__ == "__main__":
    main()
