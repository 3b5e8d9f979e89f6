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
    a phase's first over it (with the run and epoch where it fell). A phase that trains with
    Adam (the default suite's ADMM and ADMM-l1 W-steps) is also compared with a bare loop
    that steps Adam, so the optimizer's own cost is told apart from the pipeline's.

    python benchmarks/pipeline_efficiency.py [--wall SECONDS] [--rounds 3] [--repeat 3]
        [--samples 55000] [--random]

``--wall`` is the repro's wall time as measured outside (e.g. by /usr/bin/time); by default the
span of the stages' own records. The host's speed drifts (on this VM the same bare loop took
1.27 s and 1.42 s ten minutes apart), so each bare loop is measured ``--repeat`` times, in
turns, and the median is used; the range is printed. Run it right after the repro.
The bare loop trains on the first ``--samples`` of the prepared MNIST splits
(data/prepared/splits.safetensors), or with ``--random`` on random tensors of that shape (as
`benchmarks/epoch_speed.py` without ``--real``: the speed does not depend on the pixel values).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import yaml

BATCHES = 430  # LeNet-300-100, 55,000 training samples, batch 128


def _bare(rounds: int, optimizer: str, real: bool, samples: int, queue) -> None:
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from epoch_speed import bare_epoch, data

    from sparsebench.core.models import build_model
    from sparsebench.core.numerics import flush_subnormals

    torch.set_num_threads(1)
    flush_subnormals(True)
    x, y, vx, vy = data(real, samples)
    times = []
    for r in range(rounds + 1):
        torch.manual_seed(r)
        model = build_model("mlp")
        start = time.perf_counter()
        bare_epoch(model, x, y, vx, vy, torch.Generator().manual_seed(r), optimizer)
        if r:
            times.append(time.perf_counter() - start)
    queue.put(statistics.median(times))


def bare_side_by_side(workers: int, rounds: int, optimizer: str = "sgd", real: bool = True,
                      samples: int = 55000) -> float:
    """The bare-loop epoch with ``workers`` one-thread processes training at once, on
    ``samples`` of the prepared splits (``real``) or of random tensors of their shape."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args = (rounds, optimizer, real, samples, queue)
    procs = [ctx.Process(target=_bare, args=args) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return statistics.median(results)


def phase_optimizer(params: dict, phase: str, suite_retrain: str) -> str:
    """"adam" when the run's ``phase`` stepped torch's Adam, else "sgd" (the bare loop's); a
    retrain without an optimizer of its own steps the suite's (``suite_retrain``)."""
    if phase == "retrain":
        return ((params.get("retrain") or {}).get("optimizer") or {}).get("name", suite_retrain)
    return "adam" if (params.get("optimizer") or {}).get("name") == "adam" else "sgd"


def epoch_rows() -> dict[tuple[str, str], list[tuple[Path, str, list[dict]]]]:
    """(method, phase) -> (run directory under runs/, optimizer, rows) of each run that
    trained that phase. A prune phase shared by the levels of a seed
    (``runs/<method>/prune/seed<s>``) counts once: the level runs' copies of its rows
    (``seconds.shared`` in their result.json) are left out; the trajectory itself has no
    result.json, so its optimizer is read from one of its method's runs."""
    suite = yaml.safe_load(Path("params.yaml").read_text())
    suite_retrain = suite["retrain"]["optimizer"]["name"]
    records = {path.parent: json.loads(path.read_text())
               for path in sorted(Path("runs").glob("*/*/seed*/result.json"))}
    method_params = {}
    for where, record in records.items():
        method_params.setdefault(where.parts[1], record.get("params") or {})
    rows: dict[tuple[str, str], list[tuple[Path, str, list[dict]]]] = {}
    for path in Path("runs").glob("*/*/seed*/curves.json"):
        method, where = path.parts[1], path.parent
        record = records.get(where, {})
        params = record.get("params") or method_params.get(method, {})
        shared = "shared" in record.get("seconds", {})
        for phase, phase_rows in json.loads(path.read_text()).items():
            if phase_rows and not (shared and phase == "prune"):
                rows.setdefault((method, phase), []).append(
                    (where.relative_to("runs"), phase_optimizer(params, phase, suite_retrain),
                     phase_rows))
    for path in Path("runs/pretrain").glob("seed*/curves.json"):
        rows.setdefault(("pretrain", "pretrain"), []).append(
            (path.parent.relative_to("runs"), suite["pretrain"]["optimizer"]["name"],
             json.loads(path.read_text())))
    return rows


def per_epoch(row: dict) -> float:
    """A row's seconds per epoch-equivalent (a SAS-ADMM iteration counts M_k minibatches)."""
    return row["seconds"] / (row.get("inner_steps", BATCHES) / BATCHES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wall", type=float, help="the repro's wall seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3,
                        help="measurements of each bare loop (their median is the figure)")
    parser.add_argument("--samples", type=int, default=55000,
                        help="training samples of the bare loop (55000: the default suite's)")
    parser.add_argument("--random", action="store_true",
                        help="the bare loop on random tensors, not data/prepared's MNIST")
    args = parser.parse_args()
    from sparsebench.pipeline import profile

    entries = profile.load()
    workers = max(int(e.get("workers", 1)) for e in entries)
    span = entries[-1]["end"] - entries[0]["start"]
    wall = args.wall or span
    rows = epoch_rows()
    train = sum(r["seconds"] for runs in rows.values() for _, _, run in runs for r in run)
    equivalents = sum(r.get("inner_steps", BATCHES) / BATCHES
                      for runs in rows.values() for _, _, run in runs for r in run)
    used = {optimizer for runs in rows.values() for _, optimizer, _ in runs}
    measured = sorted(used & {"adam"} | {"sgd"}, reverse=True)  # the loops bare_epoch has
    samples: dict[str, list[float]] = {optimizer: [] for optimizer in measured}
    for _ in range(args.repeat):  # the host's speed drifts: sample it a few times, in turns
        for optimizer, seconds in samples.items():
            seconds.append(bare_side_by_side(workers, args.rounds, optimizer,
                                             not args.random, args.samples))
    bare = {optimizer: statistics.median(seconds) for optimizer, seconds in samples.items()}
    print(f"repro wall {wall:.1f} s ({len(entries)} stage records, span {span:.1f} s), "
          f"{workers} workers")
    for optimizer, seconds in bare.items():
        spread = samples[optimizer]
        print(f"bare-loop epoch ({optimizer}), {workers} one-thread processes side by side: "
              f"{seconds:.3f} s (median of {len(spread)}: {min(spread):.3f} to "
              f"{max(spread):.3f} s)")
    sgd = bare["sgd"]
    print(f"(a) training share: {train:.1f} epoch-seconds / ({workers} x {wall:.1f} s) = "
          f"{train / (workers * wall):.2f}  (target >= 0.85)")
    print(f"(b) efficiency: {equivalents:.0f} epoch-equivalents x {sgd:.3f} s / ({workers} x "
          f"{wall:.1f} s) = {equivalents * sgd / (workers * wall):.2f}  (target >= 0.75)")
    print("(c) per method and phase: median epoch / bare sgd epoch, max later epoch / bare sgd "
          "(targets <= 1.15, <= 1.5); for an Adam phase the same over the bare Adam epoch; "
          "the 95th percentile of the later epochs over the bare epoch of the phase's optimizer; "
          "where the max fell")
    for (method, phase), runs in sorted(rows.items()):
        epochs = [per_epoch(r) for _, _, run in runs for r in run]
        later = sorted(((per_epoch(r), f"{where} epoch {i + 2}")
                        for where, _, run in runs for i, r in enumerate(run[1:])), reverse=True)
        optimizers = {optimizer for _, optimizer, _ in runs}
        name = optimizers.pop() if len(optimizers) == 1 and optimizers <= bare.keys() else "sgd"
        own = bare[name]
        median = statistics.median(epochs)
        line = f"    {method:10s} {phase:8s} {median / sgd:5.2f} "
        line += f"{(later[0][0] / sgd if later else float('nan')):5.2f}"
        if name != "sgd":
            line += f"  ({name}: {median / own:4.2f} "
            line += f"{(later[0][0] / own if later else float('nan')):4.2f})"
        if later:
            p95 = later[len(later) // 20][0]
            line += f"  p95 {p95 / own:4.2f}  max at {later[0][1]}"
        print(line + f"  ({len(epochs)} epochs)")


if __name__ == "__main__":
    main()
