"""Save time and size of the compressed checkpoint for a large model, by the codec of its large
blobs.

`sparsebench.checkpoint.codec.candidates` codes a blob over ``LARGE`` bytes with zlib at level
6 alone (byte-shuffled or not, as a 1 MiB sample codes shorter). The baseline is the policy it
replaced: every codec tried on the sample at full effort, then the winner (in practice LZMA2)
at preset 6 over the whole blob. For each model and sparsity (per-layer magnitude masks of a
freshly initialised model, folded in), the median over ``--rounds`` of `checkpoint.save` with
each policy and with no codec stage (``compress=False``), in one process, and the ratios.
Every file is loaded back and compared with the model, bit for bit.

    python benchmarks/checkpoint_large.py [--models torchvision:alexnet] [--sparsities 0 0.952]
        [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import torch

from sparsebench.checkpoint import codec, load, save
from sparsebench.core.models import build_model
from sparsebench.core.sparsity import apply_masks, magnitude_masks, make_permanent

CURRENT = codec.candidates


def sample_best_lzma6(raw: bytes, itemsize: int) -> dict[str, bytes]:
    """The baseline: the codec shortest on the sample at full effort, LZMA2 at preset 6."""
    if len(raw) <= codec.LARGE:
        return codec._all(raw, itemsize)
    sample = codec._all(raw[: codec._SAMPLE - codec._SAMPLE % itemsize], itemsize)
    best = min(sample, key=lambda name: len(sample[name]))
    shuffled = best.endswith("+shuffle")
    data = codec.shuffle(raw, itemsize) if shuffled else raw
    if best.startswith("zlib"):
        return {best: zlib.compress(data, 6)}
    return {best: min((codec._lzma(data, s, 6) for s in codec._lzma_settings(itemsize, shuffled)),
                      key=len)}


def timed_save(model: torch.nn.Module, path: Path, policy, compress: bool = True
               ) -> tuple[float, int]:
    codec.candidates = policy
    try:
        start = time.perf_counter()
        save(model, path, compress=compress)
        seconds = time.perf_counter() - start
    finally:
        codec.candidates = CURRENT
    back = load(path).state_dict()
    ours = model.state_dict()
    assert sorted(ours) == sorted(back)
    assert all(torch.equal(ours[k], back[k]) for k in ours)
    return seconds, path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["torchvision:alexnet"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.0, 0.952])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':22} {'sparsity':>8} {'policy':>14} {'seconds':>8} {'MB':>8} "
          f"{'time/base':>9} {'size/base':>9}")
    for name in args.models:
        for sparsity in args.sparsities:
            torch.manual_seed(0)
            model = build_model(name, num_classes=1000)
            if sparsity > 0:
                apply_masks(model, magnitude_masks(model, sparsity))
                make_permanent(model)
            figures = {}
            with tempfile.TemporaryDirectory() as tmp:
                for label, policy, compress in (("lzma6 (base)", sample_best_lzma6, True),
                                                ("zlib6 (now)", CURRENT, True),
                                                ("no codec", CURRENT, False)):
                    runs = [timed_save(model, Path(tmp) / f"{label[:4]}.sb", policy, compress)
                            for _ in range(args.rounds)]
                    figures[label] = (statistics.median(s for s, _ in runs), runs[0][1])
            base_s, base_b = figures["lzma6 (base)"]
            for label, (s, b) in figures.items():
                print(f"{name:22} {sparsity:8.3f} {label:>14} {s:8.1f} {b / 1e6:8.1f} "
                      f"{s / base_s:9.3f} {b / base_b:9.3f}")


if __name__ == "__main__":
    main()
