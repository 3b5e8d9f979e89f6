"""The one training and evaluation loop every stage and method uses.

Seeded and deterministic on the CPU (same seed, same numbers), ``device: auto`` picks CUDA when
present. A split is a pair of in-memory tensors, sliced into batches (`sparsebench.data.Batches`),
or an image folder's files streamed by a `DataLoader` (`sparsebench.data.stream`). Curves are
returned per epoch (train loss, val accuracy, sparsity, ...) and optionally handed to a
callback; this module knows nothing of MLflow.
"""

from __future__ import annotations

import bisect
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.core import accelerate, distributed
from sparsebench.core.checkpoints import Resume, restore_training, training_state
from sparsebench.core.metrics import sparsity_summary
from sparsebench.core.schema import OptimizerParams, Phase
from sparsebench.data import Batches
from sparsebench.data.augment import Augment
from sparsebench.data.stream import Batch, ImageSplit, Split, size_of
from sparsebench.util.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; otherwise the named device, refused
    (one line, key ``device``) unless it can run here: ``cpu``, ``cuda`` or ``cuda:N`` with a
    GPU N present, ``mps`` where Metal is available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = ["auto", "cpu"]
    if torch.cuda.is_available():
        here += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        here.append("mps")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"device: {name!r} is not a device; allowed here: "
                         f"{', '.join(here)}") from None
    if str(device) not in here:
        raise UsageError(f"device: {name!r} is not available here; allowed here: "
                         f"{', '.join(here)}")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, torch (CPU and CUDA); return a CPU generator for shuffling."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(params: Iterable[nn.Parameter], cfg: OptimizerParams) -> torch.optim.Optimizer:
    """Build the optimizer named in the config (the schema allows sgd and adam)."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimizerParams, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step LR schedule: constant, cosine to zero over the phase, or step decay by epoch
    (every ``step_size`` epochs, or at the epochs in ``milestones``)."""
    total = max(1, epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
        )
    if cfg.milestones:  # "step" at given epochs, as torch's MultiStepLR
        def decay(t: int) -> float:
            return cfg.gamma ** bisect.bisect_right(cfg.milestones, t // steps_per_epoch)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    every = cfg.step_size * steps_per_epoch  # "step" every step_size epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: cfg.gamma ** (t // every))


def batches_of(split: Split, batch_size: int, *, device: torch.device,
               generator: torch.Generator | None = None, shuffle: bool = False,
               augment: Augment | None = None) -> Iterator[Batch]:
    """One pass over ``split``: (images, labels, global batch size), on ``device``; under
    torchrun this rank's share of each global batch. In-memory tensors are moved to ``device``
    once and sliced (`Batches`), and ``augment`` applied to each global batch (drawing from
    ``generator``); an `ImageSplit` decodes each rank's share alone (its own augmentation)."""
    share = distributed.share if distributed.active() else None
    if isinstance(split, ImageSplit):
        yield from split.epoch(batch_size, generator, shuffle=shuffle, device=device,
                               shares=share)
        return
    x, y = split[0].to(device), split[1].to(device)
    for xb, yb in Batches(x, y, batch_size, shuffle=shuffle, generator=generator):
        if augment is not None:
            xb = augment(xb, generator)
        if share is not None:
            start, length = share(len(yb))
            yield xb[start : start + length], yb[start : start + length], len(yb)
        else:
            yield xb, yb, len(yb)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor | Split, y: torch.Tensor | None = None, *,
    batch_size: int = 1024, device: torch.device | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on (x, y), or on the split ``x``
    (a pair of tensors or an `ImageSplit`) when ``y`` is None."""
    device = device or next(model.parameters()).device
    split = x if y is None else (x, y)
    if isinstance(split, ImageSplit):
        batch_size = min(batch_size, 256)  # decoded images are large
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    if isinstance(split, ImageSplit):
        pairs = ((xb, yb) for xb, yb, _ in split.epoch(batch_size, None, shuffle=False,
                                                       device=device))
    else:
        pairs = Batches(split[0], split[1], batch_size, shuffle=False)
    for xb, yb in pairs:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(1, size_of(split))
    return loss_sum.item() / n, correct.item() / n


StepHook = Callable[[int], None]  # called after every optimizer step with the global step index


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    phase: Phase,
    *,
    generator: torch.Generator,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    after_step: StepHook | None = None,
    after_backward: Callable[[], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool | None = None,
    resume: Resume | None = None,
    augment: Augment | None = None,
) -> list[dict]:
    """Train ``model`` for ``phase.epochs`` epochs; return one dict of figures per epoch.

    Args:
        model: the network, already on ``device``.
        train: the training split: (images, labels), float and normalised (any device), or
            an `ImageSplit`.
        val: the validation split.
        phase: epochs, batch size, optimizer and schedule.
        generator: the seeded CPU generator that orders the batches.
        device: where to train.
        optimizer: a ready optimizer (a method's own); built from ``phase.optim`` when None.
        after_step: called after every optimizer step with the global step index (gradual
            pruning updates its masks here).
        after_backward: called after every backward pass, before the step (ADMM adds its
            penalty's gradient here).
        on_epoch: called with each epoch's figures as soon as they exist.
        progress: show a progress bar; by default only when stderr is a terminal.
        resume: checkpoint every epoch there (`sparsebench.core.checkpoints`), and start from the
            checkpoint this fit call saved, if any: the result is bit for bit the same.
        augment: applied to every training batch (`sparsebench.data.augment`), drawing from
            ``generator``; on the global batch, before a DDP rank takes its share, so every
            rank draws the same. None (``data.augment: none``): no draws, no change.

    Returns:
        Per epoch: epoch, train_loss, train_accuracy, val_loss, val_accuracy, sparsity, lr,
        seconds.
    """
    n = size_of(train)
    if not isinstance(train, ImageSplit):  # moved once, sliced every epoch
        train = (train[0].to(device), train[1].to(device))
    distributed.check_shards(n, phase.batch_size, phase.name)
    net = accelerate.prepare(model, distributed.wrap)  # by default the model itself
    optimizer = optimizer or make_optimizer(model.parameters(), phase.optim)
    scheduler = make_scheduler(optimizer, phase.optim, phase.epochs, -(-n // phase.batch_size))
    show = sys.stderr.isatty() if progress is None else progress
    curves, step, start_epoch = [], 0, 1
    saved = resume.checkpoint.take(resume.tag) if resume is not None else None
    if saved is not None:
        restore_training(saved, model, optimizer, scheduler, generator)
        curves, step, start_epoch = list(saved["curves"]), saved["step"], saved["epoch"] + 1
    for epoch in range(start_epoch, phase.epochs + 1):
        start = time.perf_counter()
        batches = batches_of(train, phase.batch_size, device=device, generator=generator,
                             shuffle=True, augment=augment)
        loss_sum, correct, step = _train_epoch(
            model, net, _progress(batches, show, f"{phase.name} {epoch}/{phase.epochs}",
                                  -(-n // phase.batch_size)),
            optimizer, scheduler, step, device=device,
            after_backward=after_backward, after_step=after_step)
        seconds = time.perf_counter() - start
        val_loss, val_acc = evaluate(model, val, device=device)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / n,
            "train_accuracy": correct.item() / n,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "sparsity": sparsity_summary(model)["sparsity"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
        }
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(
                f"{phase.name}: the training loss is {row['train_loss']} at epoch {epoch}"
            )
        curves.append(row)
        if resume is not None:
            extra = resume.extra() if resume.extra is not None else {}
            resume.checkpoint.save(training_state(
                model, optimizer, scheduler, generator, tag=resume.tag, epoch=epoch,
                step=step, curves=curves, extra=extra))
        if on_epoch is not None:
            on_epoch(row)
    return curves


def _train_epoch(model: nn.Module, net: nn.Module, batches: Iterable[Batch],
                 optimizer: torch.optim.Optimizer, scheduler: Any, step: int, *,
                 device: torch.device, after_backward: Callable[[], None] | None,
                 after_step: StepHook | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over ``batches`` (`batches_of`): (summed loss, correct predictions, the global
    step after it), summed over torchrun's ranks."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for xb, yb, batch in batches:
        with accelerate.autocast(device):  # by default no change
            logits = net(accelerate.batch(xb))
            loss = (distributed.local_loss(logits, yb, batch) if distributed.active()
                    else F.cross_entropy(logits, yb))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        scheduler.step()
        step += 1
        if after_step is not None:
            after_step(step)
        with torch.no_grad():
            if distributed.active():  # the share's summed loss
                loss_sum += loss.detach() * batch / distributed.world()
            else:
                loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
    return distributed.all_sum(loss_sum), distributed.all_sum(correct), step


def _progress(batches: Iterable[Batch], show: bool, desc: str, total: int):
    if not show:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc=desc, total=total, leave=False, file=sys.stderr)
