"""A small generated image folder in ImageNet's layout, for tests, smoke runs and benchmarks.

Class ``c`` has a fixed random colour and a fixed oriented stripe pattern; each image is that
pattern at a random phase with Gaussian noise, at a random size (so resizing and cropping do
real work), saved as a JPEG. A small network separates the classes within an epoch or two.
Class folders are named by WordNet-like ids (``n00000000``, ``n00000001``, ...), so the folder
passes both ``imagefolder`` and ``imagenet``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def write_image_folder(root: Path, *, classes: int = 4, train_per_class: int = 12,
                       val_per_class: int = 4, sizes: tuple[int, int] = (40, 72),
                       seed: int = 0, quality: int = 90) -> Path:
    """Write ``root/train/<id>/<k>.jpg`` and ``root/val/<id>/<k>.jpg``; return ``root``.

    Args:
        root: the folder to create (its parents too).
        classes: number of class folders.
        train_per_class, val_per_class: images per class in ``train/`` and ``val/``.
        sizes: the range of each image's height and width, drawn independently.
        seed: the random source of colours, patterns, sizes and noise.
        quality: JPEG quality.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, (classes, 3))
    angles = rng.uniform(0, math.pi, classes)
    for part, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = Path(root) / part / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
                yy, xx = np.mgrid[0:h, 0:w]
                wave = np.sin((xx * math.cos(angles[c]) + yy * math.sin(angles[c])) / 3.0
                              + rng.uniform(0, 2 * math.pi))
                pixels = colours[c] + 35 * wave[..., None] + rng.normal(0, 12, (h, w, 3))
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image.save(folder / f"{part}_{c}_{k}.jpg", quality=quality)
    return Path(root)
