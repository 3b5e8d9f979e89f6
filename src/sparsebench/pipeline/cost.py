"""``sparsebench plan``: what a suite costs before it runs.

The runs come from the suite's params as the run stage would make them (levels x seeds per
method, a prune phase shared by the levels counted once per seed, each seed's pretrain), with
the epochs of each phase (`suite.plan.epoch_budget`). The images a run trains on are its epochs
x the training split; each epoch also evaluates the validation split, and each run the test
split once, counted as a third of a training image each (a forward pass of the three a
training step makes: forward, backward, update). The throughput is measured here (a few timed
training steps of the suite's model at its input size and batch on this device, with the
suite's threads) or given (``--images-per-second``). The wall time schedules the runs on the
workers longest first: pretrain first, then the rest. Not counted: start-up, data preparation,
the search of a regularisation-driven method's strength (`sparsebench calibrate`), MLflow and
the report; and a streamed image folder's decoding, which the loader must keep up with
(`benchmarks/image_throughput.py`).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsebench.core.train import resolve_device
from sparsebench.data import DATASETS, SYNTHETIC, dataset_info
from sparsebench.data.folders import FOLDER_DATASETS, scan
from sparsebench.methods import MethodParams, build_method
from sparsebench.pipeline.workers import default_workers
from sparsebench.run import ModelSpec, _cpu_model
from sparsebench.suite.load import check_data
from sparsebench.suite.params import Params
from sparsebench.suite.plan import DATA_FILE, epoch_budget, levels_of, seeds_of
from sparsebench.util.errors import UsageError

EVAL_SHARE = 1 / 3  # an evaluated image costs a third of a trained one (forward of 3 passes)


@dataclass(frozen=True)
class Row:
    """One method's runs: how many, the epochs each trains, the images they train on."""
    key: str
    runs: int
    epochs: list[int]
    images: float  # training-image equivalents, all runs


def data_shape(params: Params) -> tuple[tuple[int, int, int], int, int, int]:
    """(image shape, classes, training images, validation images) of the suite's data, from
    the prepared file when it is there, else from the params and the data set's registry."""
    d = params.data
    if DATA_FILE.exists():
        info = dataset_info(DATA_FILE)
        if info["dataset"] == d.dataset:
            sizes = info["sizes"]
            return tuple(info["shape"]), info["num_classes"], sizes["train"], sizes["val"]
    n_train = check_data(d)
    if d.dataset == SYNTHETIC:
        return tuple(d.synthetic_shape), d.synthetic_classes, n_train, d.val_size
    if d.dataset in FOLDER_DATASETS:
        here = Path(d.dir).expanduser().is_dir()
        classes = len(scan(d.dataset, Path(d.dir)).classes) if here else 1000
        return (3, d.crop, d.crop), classes, n_train, d.val_size
    spec = DATASETS[d.dataset]
    return spec.shape, spec.num_classes, n_train, d.val_size


def rows(params: Params, methods: dict[str, MethodParams], n_train: int, n_val: int
         ) -> list[Row]:
    """Each method's runs and images (and the pretrain's, first)."""
    def images(epochs: int) -> float:
        return epochs * (n_train + EVAL_SHARE * n_val)

    out = [Row("pretrain", len(params.seeds), [params.pretrain.epochs] * len(params.seeds),
               len(params.seeds) * images(params.pretrain.epochs))]
    for key, method in methods.items():
        budget = epoch_budget(params, key, method, n_train)
        seeds, levels = len(seeds_of(params, method)), len(levels_of(params, key, method))
        shared = build_method(key, method).shares_prune() and levels > 1
        per_run = budget["retrain"] + (0 if shared else budget["prune"])
        epochs = [per_run] * (seeds * levels) + ([budget["prune"]] * seeds if shared else [])
        total = sum(images(e) for e in epochs) + seeds * levels * EVAL_SHARE * n_val
        out.append(Row(key, seeds * levels, epochs, total))
    return out


def measure(params: Params, shape: tuple[int, int, int], classes: int, steps: int = 6,
            seconds: float = 20.0) -> tuple[float, str]:
    """Training images per second of one run of the suite's model on this device (its
    threads, the pretrain's batch: at most 32 on the CPU, where a large model's step takes
    minutes), from the median of ``steps`` timed steps after one warm-up (fewer, at least two,
    when they pass ``seconds``), and what was measured."""
    device = resolve_device(params.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(params.execution.threads)
    try:
        model = replace(model_spec_for(params, shape, classes), weights=None).build().to(device)
        batch = min(params.pretrain.batch_size, 256 if device.type == "cuda" else 32)
        x = torch.randn(batch, *shape, device=device)
        y = torch.randint(classes, (batch,), device=device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        timed: list[float] = []
        while len(timed) < steps + 1 and (len(timed) < 3 or sum(timed[1:]) < seconds):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            timed.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    timed = sorted(timed[1:])  # the first step warms up
    rate = batch / timed[len(timed) // 2]
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model())
    return rate, (f"measured: {len(timed)} steps of batch {batch} at "
                  f"{'x'.join(map(str, shape))} on {where}, {params.execution.threads} "
                  "thread(s) a run")


def model_spec_for(params: Params, shape: tuple[int, int, int], classes: int) -> ModelSpec:
    """The suite's model for data of ``shape`` and ``classes``."""
    m = params.model
    return ModelSpec(m.name, dict(m.args), shape[0], shape[1], classes, tuple(m.exclude),
                     m.weights)


def makespan(durations: list[float], workers: int) -> float:
    """Wall time of independent jobs on ``workers``, longest first to the least loaded."""
    loads = [0.0] * workers
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + d)
    return max(loads)


def workers_of(params: Params, given: int | None) -> int:
    e = params.execution
    if given is not None:
        if given < 1:
            raise UsageError(f"--workers: {given} is out of range; allowed: an integer >= 1")
        return given
    if e.workers:
        return e.workers
    device = resolve_device(params.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    return default_workers(e.threads, gpus, e.runs_per_gpu)


def plan_lines(params: Params, methods: dict[str, MethodParams], *,
               images_per_second: float | None = None, workers: int | None = None) -> list[str]:
    """The table ``sparsebench plan`` prints."""
    shape, classes, n_train, n_val = data_shape(params)
    if images_per_second is not None:
        if not images_per_second > 0:
            raise UsageError(f"--images-per-second: {images_per_second} is out of range; "
                             "allowed: a number > 0 (training images a second, one run)")
        rate, how = images_per_second, "given (--images-per-second)"
    else:
        rate, how = measure(params, shape, classes)
    slots = workers_of(params, workers)
    table = rows(params, methods, n_train, n_val)
    lines = [f"plan: suite {params.suite}: {params.model.name} on {params.data.dataset} "
             f"({n_train:,} training and {n_val:,} validation images, "
             f"{'x'.join(map(str, shape))})",
             f"throughput: {rate:,.0f} training images/s a run ({how})",
             f"{'method':<18}{'runs':>6}{'epochs a run':>14}{'images':>14}{'run-hours':>11}"]
    for row in table:
        span = f"{min(row.epochs)}" if min(row.epochs) == max(row.epochs) else \
            f"{min(row.epochs)}-{max(row.epochs)}"
        lines.append(f"{row.key:<18}{row.runs:>6}{span:>14}{_count(row.images):>14}"
                     f"{row.images / rate / 3600:>11.2f}")
    total = sum(r.images for r in table)
    per_run = [e * (n_train + EVAL_SHARE * n_val) / rate for r in table[1:] for e in r.epochs]
    pretrain = [e * (n_train + EVAL_SHARE * n_val) / rate for e in table[0].epochs]
    wall = makespan(pretrain, slots) + makespan(per_run, slots)
    lines += [f"{'total':<18}{sum(r.runs for r in table):>6}{'':>14}{_count(total):>14}"
              f"{total / rate / 3600:>11.2f}",
              f"wall time on {slots} worker(s): {_duration(wall)} (pretrain first, then the "
              "runs, longest first; start-up, calibration and tracking not counted)"]
    return lines


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"
