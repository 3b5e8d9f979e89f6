"""Training images per second through the streamed image-folder loader against synthetic tensors.

One process, one torchvision model, one optimizer (SGD, momentum 0.9, lr 0.01), one batch size:
cross-entropy training steps (forward, backward, step) fed (a) from one batch of random tensors
already on the device and (b) through `sparsebench.data.stream.ImageSplit`, the loader of the
image-folder suites (JPEGs decoded, random-resized-cropped and flipped by ``--workers``
`DataLoader` processes, normalised on the device). Each side runs ``--warmup`` steps, then
``--steps`` timed ones; on CUDA the clock is read after ``torch.cuda.synchronize()``. The timed
streamed steps start a fresh epoch, so its worker start-up and first batch are in the figure:
they are paid at every epoch of a real run. ``--rounds`` repeats both sides, synthetic first in
odd rounds and streamed first in even ones (the warm-up only in the first), so that a machine
whose load drifts weighs on both alike; each side's figure is its total. The ratio
streamed/synthetic says whether the loader starves the model (target >= 0.9). A last line times
the loader alone (no model), to tell a slow loader from one that competes with the model for the
same cores.

cuDNN autotuning stays at torch's default (off), as in the project's runs. Without ``--folder``
a folder is generated (`sparsebench.data.example`, JPEGs a little larger than the crop, one
epoch covering the timed steps) into a temporary directory, in parallel processes.

Needs only torch, torchvision, numpy and Pillow (with ``PYTHONPATH=src`` where sparsebench is
not installed), so that it runs on a bare GPU machine:

    python benchmarks/image_throughput.py                      # resnet18, 64x64 on CPU
    python benchmarks/image_throughput.py --model resnet50 --size 224 --workers 12 --bf16 \\
        --channels-last
    python benchmarks/image_throughput.py --toy                # a couple of steps: checks it runs
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from sparsebench.data.example import write_image_folder
from sparsebench.data.folders import IMAGENET_MEAN, IMAGENET_STD, scan
from sparsebench.data.stream import ImageSplit, set_loader_workers
from sparsebench.util.errors import UsageError

NAME = "image_throughput"
#: defaults on CPU and on CUDA: input side, batch size, warm-up and timed steps
DEFAULTS = {"cpu": {"size": 64, "batch_size": 64, "warmup": 3, "steps": 30},
            "cuda": {"size": 224, "batch_size": 256, "warmup": 10, "steps": 50}}
TOY = {"model": "resnet18", "size": 32, "batch_size": 4, "warmup": 1, "steps": 2, "workers": 1,
       "classes": 2, "threads": 1}
#: (images, labels) on the device
Batch = tuple[torch.Tensor, torch.Tensor]


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="torchvision classification model "
                        "(default resnet18)")
    parser.add_argument("--size", type=int, default=None, help="crop side (64 on CPU, 224 CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="64 on CPU, 256 on CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (3 CPU, 10 CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (30 CPU, 50 CUDA)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader processes "
                        "(default 2, data.loader_workers' default)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both sides, their "
                        "order alternating (synthetic first in odd rounds); figures: the totals")
    parser.add_argument("--folder", type=Path, default=None,
                        help="an image folder (train/<class>/...); default: a generated one")
    parser.add_argument("--classes", type=int, default=None,
                        help="classes of the generated folder (default 16)")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="write the lines here too")
    parser.add_argument("--toy", action="store_true", help="a tiny run that checks it works")
    return parser


def refuse(flag: str, value: object, allowed: str) -> None:
    sys.exit(f"{NAME}: {flag}: {value!r} is not allowed; allowed: {allowed}")


def pick_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        refuse("--device", name, "auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        refuse("--device", name, "auto or cpu here (torch.cuda.is_available() is False)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def settle(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill the options not given (from `TOY` under ``--toy``, then `DEFAULTS`) and check them."""
    fallback = {"model": "resnet18", "workers": 2, "classes": 16, **DEFAULTS[device.type]}
    for key, value in {**fallback, **(TOY if args.toy else {})}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    models = torchvision.models.list_models(module=torchvision.models)
    if args.model not in models:
        refuse("--model", args.model, "a torchvision classification model "
               "(torchvision.models.list_models(module=torchvision.models)), e.g. resnet18")
    for flag, value, low in (("--size", args.size, 16), ("--batch-size", args.batch_size, 2),
                             ("--warmup", args.warmup, 0), ("--steps", args.steps, 1),
                             ("--rounds", args.rounds, 1), ("--workers", args.workers, 0),
                             ("--classes", args.classes, 1), ("--threads", args.threads, 1)):
        if value is not None and value < low:
            refuse(flag, value, f"an integer >= {low}")
    if args.folder is not None and not (args.folder / "train").is_dir():
        refuse("--folder", str(args.folder), "a folder with train/<class>/<image> and "
               "val/<class>/<image> (torchvision's ImageFolder layout)")
    return args


def _write_class(root: Path, c: int, per_class: int, sizes: tuple[int, int]) -> None:
    """Class ``c`` of a generated folder, written beside it then moved in as ``n{c:08d}``."""
    part = write_image_folder(root / f".part{c}", classes=1, train_per_class=per_class,
                              val_per_class=1, sizes=sizes, seed=c)
    for name in ("train", "val"):
        (root / name).mkdir(exist_ok=True)
        (part / name / "n00000000").rename(root / name / f"n{c:08d}")
    shutil.rmtree(part)


def generate_folder(root: Path, images: int, size: int, classes: int,
                    processes: int | None = None) -> Path:
    """A generated image folder with at least ``images`` training JPEGs, sides drawn from
    [5/4, 3/2] of ``size`` (so the random-resized crop does real work), one class per task on
    ``processes`` processes (default: every core)."""
    per_class = math.ceil(images / classes)
    sizes = (size * 5 // 4, size * 3 // 2)
    processes = min(classes, processes or os.cpu_count() or 1)
    with ProcessPoolExecutor(processes, mp_context=get_context("fork")) as pool:
        list(pool.map(_write_class, itertools.repeat(root), range(classes),
                      itertools.repeat(per_class), itertools.repeat(sizes)))
    return root


def image_split(root: Path, size: int) -> ImageSplit:
    """The training split of the folder ``root``, as the image-folder suites stream it."""
    folder = scan("imagefolder", root)
    return ImageSplit(root, tuple(path for path, _ in folder.train),
                      torch.tensor([label for _, label in folder.train]), train=True, crop=size,
                      resize=size * 8 // 7, scale=(0.08, 1.0), mean=IMAGENET_MEAN,
                      std=IMAGENET_STD)


def streamed(split: ImageSplit, batch_size: int, device: torch.device, seed: int
             ) -> Generator[Batch]:
    """Shuffled training batches, epoch after epoch, each from a fresh set of workers."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        for images, labels, _ in split.epoch(batch_size, generator, shuffle=True,
                                             device=device):
            yield images, labels


def synthetic(batch: Batch) -> Generator[Batch]:
    """The same batch, already on the device, for ever."""
    while True:
        yield batch


def trainer(model: torch.nn.Module, bf16: bool, channels_last: bool,
            device: torch.device) -> Callable[[Batch], None]:
    """One training step on a batch: forward, cross-entropy, backward, SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(batch: Batch) -> None:
        images, labels = batch
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable[[Batch], None], batches: Callable[[], Generator[Batch]],
            warmup: int, steps: int, device: torch.device) -> tuple[int, float, float]:
    """(images, seconds, seconds to the first batch) of ``steps`` timed steps on a fresh
    ``batches()``, after ``warmup`` steps on another."""
    warm = batches()
    for batch in itertools.islice(warm, warmup):
        step(batch)
    warm.close()  # stops a streamed epoch's worker processes
    sync(device)
    timed, images, first = batches(), 0, 0.0
    start = time.perf_counter()
    for i, batch in enumerate(itertools.islice(timed, steps)):
        if i == 0:
            first = time.perf_counter() - start
        step(batch)
        images += len(batch[1])
    sync(device)
    seconds = time.perf_counter() - start
    timed.close()
    return images, seconds, first


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name")), "unknown CPU")


def header(device: torch.device, workers: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (f"machine: {cpu_model()}, {os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.2f}; torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}; device {name}; {torch.get_num_threads()} threads, "
            f"{workers} loader workers")


def setup(args: argparse.Namespace, split: ImageSplit, made: float | None) -> str:
    precision = "bf16 autocast" if args.bf16 else "fp32"
    layout = ", channels_last" if args.channels_last else ""
    compiled = ", torch.compile" if args.compile else ""
    source = (f"generated, {len(split)} training JPEGs, sides {args.size * 5 // 4}-"
              f"{args.size * 3 // 2} px, {made:.1f} s to write" if made is not None
              else f"{args.folder}, {len(split)} training images")
    return (f"setup: {args.model} at {args.size}x{args.size}, batch {args.batch_size}, "
            f"{args.warmup} warm-up + {args.steps} timed steps, SGD momentum 0.9 lr 0.01, "
            f"{precision}{layout}{compiled}; folder {source}")


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("inf")


def totals(runs: list[tuple[int, float, float]]) -> str:
    """Images and seconds of a side's rounds, and each round's rate when there are several."""
    text = f"{sum(i for i, _, _ in runs)} images in {sum(s for _, s, _ in runs):.2f} s"
    if len(runs) > 1:
        text += ", rounds " + ", ".join(f"{rate(i, s):.1f}" for i, s, _ in runs)
    return text


def run(args: argparse.Namespace, device: torch.device, root: Path, made: float | None
        ) -> list[str]:
    """The printed lines of one measurement (see the module docstring)."""
    split = image_split(root, args.size)
    lines = [header(device, args.workers), setup(args, split, made)]
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, num_classes=max(1000, args.classes))
    model = model.to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = trainer(torch.compile(model) if args.compile else model, args.bf16,
                   args.channels_last, device)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, int(split.labels.max()) + 1, (args.batch_size,), device=device)
    seeds = itertools.count()  # each epoch its own order and crops
    sides = {"synthetic": lambda: synthetic((x, y)),
             "streamed": lambda: streamed(split, args.batch_size, device, next(seeds))}
    runs: dict[str, list[tuple[int, float, float]]] = {name: [] for name in sides}
    for r in range(args.rounds):  # ABBA...: a load that drifts weighs on both sides alike
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            runs[name].append(measure(step, sides[name], args.warmup if r == 0 else 0,
                                      args.steps, device))
    fed, stream = (rate(sum(i for i, _, _ in runs[n]), sum(s for _, s, _ in runs[n]))
                   for n in sides)
    per_epoch = math.ceil(len(split) / args.batch_size)
    epochs = args.rounds * math.ceil(args.steps / per_epoch)
    firsts = ", ".join(f"{first:.2f}" for _, _, first in runs["streamed"])
    lines.append(f"synthetic: {fed:.1f} images/s ({totals(runs['synthetic'])})")
    lines.append(f"streamed: {stream:.1f} images/s ({totals(runs['streamed'])}; {epochs} "
                 f"epoch{'s' * (epochs != 1)} timed, each from its workers' start, first batch "
                 f"after {firsts} s)")
    lines.append(f"ratio streamed/synthetic: {stream / fed:.3f} (target >= 0.9)")
    images, seconds, _ = measure(lambda batch: None,
                                 lambda: streamed(split, args.batch_size, device, next(seeds)), 0,
                                 args.steps, device)
    workers = f"{args.workers} worker{'s' * (args.workers != 1)}"
    lines.append(f"loader alone: {rate(images, seconds):.1f} images/s ({images} images in "
                 f"{seconds:.2f} s, no model: what {workers} decode with no training beside them)")
    return lines


def main() -> None:
    args = arguments().parse_args()
    device = pick_device(args.device)
    args = settle(args, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_loader_workers(args.workers)
    with tempfile.TemporaryDirectory(prefix="image_throughput_") as tmp:
        root, made = args.folder, None
        if root is None:
            start = time.perf_counter()
            root = generate_folder(Path(tmp) / "folder", args.steps * args.batch_size,
                                   args.size, args.classes)
            made = time.perf_counter() - start
        try:
            lines = run(args, device, root, made)
        except UsageError as exc:  # a --folder that scan refuses, one line naming it
            sys.exit(f"{NAME}: --folder: {exc}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
