"""CPU inference latency of LeNet-300-100: dense kernels against CSR Linear layers.

For each sparsity, a randomly initialised LeNet-300-100 (seed 0) is pruned per layer by
magnitude and timed by `sparsebench.core.latency.compare_latency`: the dense copy (exact zeros,
dense matmul) and the CSR copy (`sparse_inference_model`) alternate forward passes in this one
process; the table gives the median seconds per forward pass and sparse / dense. The speed does
not depend on the weight values, only on how many are nonzero, so no training is needed.

    python benchmarks/latency.py [--threads 1] [--repeats-1 300] [--repeats-256 50]
"""

from __future__ import annotations

import argparse

import torch

from sparsebench.core.latency import compare_latency
from sparsebench.core.models import build_model
from sparsebench.core.sparsity import apply_masks, magnitude_masks

SPARSITIES = (0.0, 0.5, 0.9, 0.95, 0.98, 0.99, 0.995)
INPUT_SHAPE = (1, 28, 28)


def pruned_mlp(sparsity: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("mlp")
    apply_masks(model, magnitude_masks(model, sparsity, "layer"))
    return model


def wins_from(ratios: dict[float, float]) -> str:
    """The lowest sparsity from which the sparse path is faster at every higher one too."""
    winning = None
    for sparsity in sorted(ratios, reverse=True):
        if ratios[sparsity] >= 1:
            break
        winning = sparsity
    return "never" if winning is None else f"from {winning:.1%} on"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats-1", type=int, default=300)
    parser.add_argument("--repeats-256", type=int, default=50)
    args = parser.parse_args()
    repeats = {1: args.repeats_1, 256: args.repeats_256}

    ratios: dict[int, dict[float, float]] = {1: {}, 256: {}}
    print(
        f"LeNet-300-100, torch {torch.__version__}, {args.threads} thread(s), "
        f"repeats {repeats[1]} (batch 1) / {repeats[256]} (batch 256), interleaved"
    )
    print(f"{'sparsity':>8} {'batch':>5} {'dense ms':>9} {'sparse ms':>9} {'sparse/dense':>12}")
    for sparsity in SPARSITIES:
        model = pruned_mlp(sparsity)
        for batch_size in (1, 256):
            result = compare_latency(
                model,
                INPUT_SHAPE,
                (batch_size,),
                repeats=repeats[batch_size],
                num_threads=args.threads,
            )
            row = result["batch"][batch_size]
            ratios[batch_size][sparsity] = row["ratio"]
            print(
                f"{sparsity:>8.1%} {batch_size:>5} {row['dense_s'] * 1e3:>9.3f} "
                f"{row['sparse_s'] * 1e3:>9.3f} {row['ratio']:>12.2f}"
            )
    for batch_size, by_sparsity in ratios.items():
        print(f"batch {batch_size}: the sparse path wins {wins_from(by_sparsity)}")


if __name__ == "__main__":
    main()
