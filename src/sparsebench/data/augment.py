"""Training-batch augmentation: the standard CIFAR-10 pad, random crop and horizontal flip.

``crop_flip`` is the augmentation of He et al. 2016 ("Deep residual learning for image
recognition", CVPR, section 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly
sampled from the padded image or its horizontal flip"), which the SAS-ADMM authors' released
code uses for CIFAR-10 (torchvision's ``RandomCrop(32, padding=4)`` then
``RandomHorizontalFlip()``, per sample, each time a sample is drawn; ALGORITHMS.md section 4).

Here it runs on a whole batch at once, on the batch's device, after normalisation (the splits
are held normalised in memory): one gather, no per-sample Python. Its randomness (a crop offset
and a flip bit per sample) comes from the seeded CPU generator that orders the batches, so a run
stays deterministic, and resumable from the generator state its checkpoints already hold.

Padding: torchvision pads the raw image with 0 (black) before ``Normalize``; in the normalised
space that pixel is ``(0 - mean) / std`` per channel, and that is what ``fill`` should be to
match the authors (`Augment.for_data` computes it from the data set's mean and std).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: the image shape ``crop_flip`` is for (C, H, W): CIFAR-10's
CROP_FLIP_SHAPE = (3, 32, 32)


def crop_flip(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4,
              fill: float | Sequence[float] = 0.0) -> torch.Tensor:
    """Pad each image by ``pad`` pixels, crop it back to its size at a random offset, and flip
    it left-right with probability 0.5, independently per sample.

    Draws from ``generator`` (on the CPU, in this order): the offsets, a (N, 2) tensor of
    integers in 0 .. 2 * pad (row, column: the crop's top-left corner in the padded image, all
    2 * pad + 1 equally likely, as torchvision's ``RandomCrop``), then the flips, N bits.

    Args:
        x: a batch (N, C, H, W), on any device.
        generator: the seeded CPU generator of the run.
        pad: pixels of padding on each side (4 in the ResNet paper).
        fill: the padding value, one for all channels or one per channel (in the space of
            ``x``; the normalised black pixel to match torchvision's ``padding=4``).

    Returns:
        A new batch, same shape, dtype and device as ``x`` (`crop_flip_at` of the draws).
    """
    n = len(x)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator, dtype=torch.bool)
    return crop_flip_at(x, offsets, flips, pad=pad, fill=fill)


def crop_flip_at(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, *, pad: int,
                 fill: float | Sequence[float] = 0.0) -> torch.Tensor:
    """`crop_flip` at given draws: the crop comes first and the flip mirrors it (torchvision's
    order), ``out[n, :, i, j] = padded[n, :, row_n + i, col_n + j]``, or ``col_n + W - 1 - j``
    where ``flips[n]``; ``(row_n, col_n) = offsets[n]``. One gather: no per-sample Python."""
    n, c, h, w = x.shape
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    padded = value.expand(c, h + 2 * pad, w + 2 * pad).repeat(n, 1, 1, 1)  # (N, C, H+2p, W+2p)
    padded[:, :, pad : pad + h, pad : pad + w] = x
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H)
    across = torch.arange(w, device=x.device)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - across, across)  # (N, W)
    return padded[torch.arange(n, device=x.device)[:, None, None, None],
                  torch.arange(c, device=x.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)


@dataclass(frozen=True)
class Augment:
    """A training-batch augmentation (`crop_flip` with its padding value), called on each
    global training batch as ``augment(x, generator)``; validation and test are never
    augmented. ``data.augment: none`` is no `Augment` at all (None), so nothing is drawn."""

    name: str
    fill: tuple[float, ...] = (0.0,)
    pad: int = 4

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return crop_flip(x, generator, pad=self.pad, fill=self.fill)

    @classmethod
    def for_data(cls, name: str, mean: Sequence[float], std: Sequence[float]) -> Augment | None:
        """``data.augment`` for a data set normalised with ``mean`` and ``std`` (per channel,
        of images in [0, 1]): None for ``none``; padding with the black pixel otherwise."""
        if name == "none":
            return None
        return cls(name, tuple(-m / s for m, s in zip(mean, std, strict=True)))
