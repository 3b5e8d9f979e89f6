"""The per-epoch resume checkpoint's share of epoch time on the default suite's model.

`train.fit` writes the checkpoint (`sparsebench.core.checkpoints`: model, masks, optimizer,
schedule, RNG states, curves) at the end of every epoch when a stage runs it. This runs one
epoch of LeNet-300-100 with the default suite's pretrain optimizer with and without the
checkpoint, interleaved, same process, and reports the ratio of the medians and the save's own
time as a share of the epoch. Target: at most 3%.

    python benchmarks/checkpoint_overhead.py [--rounds 7] [--real] [--dir PATH]

``--dir`` is where the checkpoint goes (default: a temp dir on the disk of runs/).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import torch
from epoch_speed import data, epoch_arguments, interleaved

from sparsebench.core import train
from sparsebench.core.checkpoints import EpochCheckpoint, Resume
from sparsebench.core.models import build_model
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.train import Phase, fit

PHASE = Phase(1, 128, OptimizerParams(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4))


class Timed(EpochCheckpoint):
    """Records how long each checkpoint takes: gathering the state (`training_state`, timed
    by the wrapper below) and writing it."""

    seconds: ClassVar[list[float]] = []
    gathering: ClassVar[float] = 0.0

    def save(self, state: dict) -> None:
        start = time.perf_counter()
        super().save(state)
        Timed.seconds.append(time.perf_counter() - start + Timed.gathering)


def _timed_state(*args, **kwargs) -> dict:
    start = time.perf_counter()
    state = _training_state(*args, **kwargs)
    Timed.gathering = time.perf_counter() - start
    return state


_training_state = train.training_state
train.training_state = _timed_state  # fit looks it up in its module at every epoch


def epoch(checkpoint: Path | None, x, y, vx, vy, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_model("mlp")
    resume = None
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # a fresh run, nothing to restore
        resume = Resume(Timed(checkpoint), "pretrain")
    start = time.perf_counter()
    fit(model, (x, y), (vx, vy), PHASE, generator=torch.Generator().manual_seed(seed),
        device=torch.device("cpu"), progress=False, resume=resume)
    return time.perf_counter() - start


def main() -> None:
    parser = epoch_arguments(__doc__)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    x, y, vx, vy = data(args.real, args.samples)
    Path("runs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir or "runs") as tmp:
        path = Path(tmp) / "seed0.resume.pt"
        medians = interleaved(args.rounds, {
            "plain": lambda r: epoch(None, x, y, vx, vy, r),
            "checkpoint": lambda r: epoch(path, x, y, vx, vy, r)})
        size = path.stat().st_size
    plain, with_ckpt = medians["plain"], medians["checkpoint"]
    save = statistics.median(Timed.seconds[1:])
    print(f"LeNet-300-100, {len(y)} samples, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads; checkpoint {size / 1e6:.2f} MB")
    print(f"epoch without checkpoint: median {plain:.3f} s")
    print(f"epoch with checkpoint:    median {with_ckpt:.3f} s "
          f"(ratio {with_ckpt / plain:.3f})")
    print(f"checkpoint save: median {1000 * save:.1f} ms = {100 * save / plain:.2f}% of an "
          "epoch  (target <= 3%)")


if __name__ == "__main__":
    main()
