"""How close the last `dvc repro` came to the speed limit of this machine.

Reads what the stages recorded (`.cache/profile/`, `sparsebench profile`) and every run's
curves (`runs/<method>/<level>/seed<s>/curves.json`, `runs/pretrain/seed<s>/curves.json`), then
measures the bare-loop epoch here (`benchmarks/epoch_speed.py`'s loop, one thread, in
``workers`` processes side by side, as the pipeline's runs train) and prints:

(a) the training share: the epochs' own seconds summed over all runs, over workers x the wall
    time of the stages (plus DVC's time between them);
(b) the efficiency against the limit: epoch-equivalents trained (a SAS-ADMM iteration of M_k
    minibatches counts as M_k / batches-per-epoch) x the bare-loop epoch, over the wall time x
    workers;
(c) per method and phase, the median epoch over the bare-loop epoch, and the largest epoch after
    a phase's first over it.

    python benchmarks/pipeline_efficiency.py [--wall SECONDS] [--rounds 3]

``--wall`` is the repro's wall time as measured outside (e.g. by /usr/bin/time); by default the
span of the stages' own records.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

BATCHES = 430  # LeNet-300-100, 55,000 training samples, batch 128


def _bare(rounds: int, queue) -> None:
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from epoch_speed import bare_epoch, data

    from sparsebench.models import build_model
    from sparsebench.numerics import flush_subnormals

    torch.set_num_threads(1)
    flush_subnormals(True)
    x, y, vx, vy = data(True, 55000)
    times = []
    for r in range(rounds + 1):
        torch.manual_seed(r)
        model = build_model("mlp")
        start = time.perf_counter()
        bare_epoch(model, x, y, vx, vy, torch.Generator().manual_seed(r))
        if r:
            times.append(time.perf_counter() - start)
    queue.put(statistics.median(times))


def bare_side_by_side(workers: int, rounds: int) -> float:
    """The bare-loop epoch with ``workers`` one-thread processes training at once."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_bare, args=(rounds, queue)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return statistics.median(results)


def epoch_rows() -> dict[tuple[str, str], list[list[dict]]]:
    """(method, phase) -> each run's rows of that phase. A prune phase shared by the levels
    of a seed (``runs/<method>/prune/seed<s>``) counts once: the level runs' copies of its
    rows (``seconds.shared`` in their result.json) are left out."""
    rows: dict[tuple[str, str], list[list[dict]]] = {}
    for path in Path("runs").glob("*/*/seed*/curves.json"):
        method = path.parts[1]
        curves = json.loads(path.read_text())
        result = path.with_name("result.json")
        shared = result.exists() and "shared" in json.loads(result.read_text())["seconds"]
        for phase, phase_rows in curves.items():
            if phase_rows and not (shared and phase == "prune"):
                rows.setdefault((method, phase), []).append(phase_rows)
    for path in Path("runs/pretrain").glob("seed*/curves.json"):
        rows.setdefault(("pretrain", "pretrain"), []).append(json.loads(path.read_text()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wall", type=float, help="the repro's wall seconds")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from sparsebench import profile

    entries = profile.load()
    workers = max(int(e.get("workers", 1)) for e in entries)
    span = entries[-1]["end"] - entries[0]["start"]
    wall = args.wall or span
    rows = epoch_rows()
    train = sum(r["seconds"] for runs in rows.values() for run in runs for r in run)
    equivalents = sum(r.get("inner_steps", BATCHES) / BATCHES
                      for runs in rows.values() for run in runs for r in run)
    bare = bare_side_by_side(workers, args.rounds)
    print(f"repro wall {wall:.1f} s ({len(entries)} stage records, span {span:.1f} s), "
          f"{workers} workers")
    print(f"bare-loop epoch, {workers} one-thread processes side by side: {bare:.3f} s")
    print(f"(a) training share: {train:.1f} epoch-seconds / ({workers} x {wall:.1f} s) = "
          f"{train / (workers * wall):.2f}  (target >= 0.85)")
    print(f"(b) efficiency: {equivalents:.0f} epoch-equivalents x {bare:.3f} s / ({workers} x "
          f"{wall:.1f} s) = {equivalents * bare / (workers * wall):.2f}  (target >= 0.75)")
    print("(c) per method and phase: median epoch / bare, max later epoch / bare "
          "(targets <= 1.15, <= 1.5)")
    for (method, phase), runs in sorted(rows.items()):
        per_epoch = [r["seconds"] / (r.get("inner_steps", BATCHES) / BATCHES)
                     for run in runs for r in run]
        later = [r["seconds"] / (r.get("inner_steps", BATCHES) / BATCHES)
                 for run in runs for r in run[1:]]
        print(f"    {method:10s} {phase:8s} {statistics.median(per_epoch) / bare:6.2f} "
              f"{(max(later) / bare if later else float('nan')):6.2f}   ({len(per_epoch)} epochs)")


if __name__ == "__main__":
    main()
