"""Streamed image splits: files decoded and augmented by a `DataLoader`'s worker processes.

A split too large for memory (ImageNet: 1.28 million JPEGs) is an `ImageSplit`: its files,
labels and transform sizes. Each epoch draws its order from the run's seeded CPU generator (one
``torch.randperm``, as `sparsebench.data.Batches` does), then one 63-bit augmentation seed; a
sample's random crop and flip are drawn from a generator seeded by (that seed, its index), so a
sample is the same whichever worker process decodes it, however many there are
(``data.loader_workers``), on resume (the generator's state is in every epoch checkpoint) and
under torchrun, where each rank loads only its share of every global batch.

Images are decoded by Pillow (as torchvision's ``ImageFolder``) and transformed by torchvision's
v2 transforms (Szegedy et al. 2015, "Going deeper with convolutions": the random-resized crop
of Inception training; the flip of Krizhevsky et al. 2012): training images
``RandomResizedCrop(crop, scale)`` then ``RandomHorizontalFlip``; evaluation images
``Resize(resize)`` (shorter side) then ``CenterCrop(crop)`` (224 of 256 in torchvision's
ImageNet references). Workers send uint8 crops; they are scaled and normalised on the device
(a quarter of the bytes through shared and pinned memory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

#: ``data.loader_workers`` in this process (set by the stage, a worker inherits it)
_LOADER_WORKERS = [2]
_MIX = 0x9E3779B97F4A7C15  # the 64-bit golden ratio: spreads (seed, index) over the seed space


#: (images, labels, the global batch's size) on the device
Batch = tuple[torch.Tensor, torch.Tensor, int]
#: a rank's (start, length) in a global batch of the given size (`distributed.share`)
Share = Callable[[int], tuple[int, int]]


def set_loader_workers(workers: int) -> None:
    """The number of `DataLoader` worker processes every `ImageSplit` uses in this process."""
    _LOADER_WORKERS[0] = int(workers)


def loader_workers() -> int:
    return _LOADER_WORKERS[0]


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split of an image folder, streamed from disk.

    Args:
        root: the folder the paths are relative to.
        files: each sample's path, relative to ``root``.
        labels: int64 (N,) class indices.
        train: training split (random crop and flip) or evaluation (resize, centre crop).
        crop: side of the square crop the model sees.
        resize: evaluation images' shorter side before the centre crop.
        scale: the area range of ``RandomResizedCrop``.
        mean, std: per-channel normalisation of images scaled to [0, 1].
    """

    root: Path
    files: tuple[str, ...]
    labels: torch.Tensor
    train: bool
    crop: int
    resize: int
    scale: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _stats: dict = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.crop, self.crop)

    def epoch(self, batch_size: int, generator: torch.Generator | None, *, shuffle: bool,
              device: torch.device, shares: Share | None = None) -> Iterator[Batch]:
        """One pass in batches of ``batch_size``: (images, labels, global batch size).

        ``shuffle`` draws the order, then the augmentation seed (training splits), from
        ``generator``. ``shares``: this rank's (start, length) of a global batch of each size
        (torchrun), so that it decodes only its share."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        seed = int(torch.randint(1 << 62, (), generator=generator)) if self.train else 0
        batches = [order[start : start + batch_size] for start in range(0, n, batch_size)]
        return self.load(batches, seed, device, shares)

    def load(self, batches: Sequence[torch.Tensor], seed: int, device: torch.device,
             shares: Share | None = None) -> Iterator[Batch]:
        """Decode the given batches of indices with augmentation seed ``seed``, in order."""
        sizes = [len(b) for b in batches]
        if shares is not None:
            batches = [b[start : start + length] for b, (start, length)
                       in zip(batches, (shares(s) for s in sizes), strict=True)]
        workers = loader_workers()
        loader = DataLoader(
            _Decoded(self, seed), batch_sampler=[b.tolist() for b in batches],
            num_workers=workers, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),  # leaves the global RNG alone
            prefetch_factor=4 if workers else None, persistent_workers=False)
        for (xb, yb), size in zip(loader, sizes, strict=True):
            yield self.normalise(xb.to(device, non_blocking=True)), \
                yb.to(device, non_blocking=True), size

    def normalise(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 crops to float32 ``(x / 255 - mean) / std``, on their device."""
        key = str(xb.device)
        if key not in self._stats:
            self._stats[key] = tuple(torch.tensor(v, device=xb.device).view(1, -1, 1, 1)
                                     for v in (self.mean, self.std))
        mean, std = self._stats[key]
        return xb.to(torch.float32).div_(255).sub_(mean).div_(std)

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` samples, transformed for evaluation and normalised (an example input)."""
        ds = _Decoded(self, 0)
        return self.normalise(torch.stack([ds[i][0] for i in range(min(n, len(self)))]))


class _Decoded(Dataset):
    """The samples of an `ImageSplit` for one augmentation seed: (uint8 (3, crop, crop), label)."""

    def __init__(self, split: ImageSplit, seed: int):
        from torchvision.transforms import v2

        self.split, self.seed = split, seed
        if split.train:
            steps = [v2.RandomResizedCrop(split.crop, scale=split.scale, antialias=True),
                     v2.RandomHorizontalFlip()]
        else:
            steps = [v2.Resize(split.resize, antialias=True), v2.CenterCrop(split.crop)]
        self.transform = v2.Compose([*steps, v2.PILToTensor()])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        split = self.split
        with Image.open(split.root / split.files[i]) as file:
            image = file.convert("RGB")
        if split.train:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.seed * _MIX + i) % (1 << 63))
                image = self.transform(image)
        else:
            image = self.transform(image)
        return image, int(split.labels[i])


#: a split: (images, labels) in memory, or an image folder's streamed files
Split = tuple[torch.Tensor, torch.Tensor] | ImageSplit


def size_of(split: Split) -> int:
    """The number of samples of ``split``."""
    return len(split) if isinstance(split, ImageSplit) else len(split[1])


def labels_of(split: Split) -> torch.Tensor:
    """The int64 labels of ``split``."""
    return split.labels if isinstance(split, ImageSplit) else split[1]


def head_of(split: Split, n: int) -> torch.Tensor:
    """The first ``n`` inputs of ``split``, normalised (an image folder's: evaluation crops)."""
    return split.head(n) if isinstance(split, ImageSplit) else split[0][:n]
