"""Fixed train/val/test splits: built from raw files, stored in safetensors, sliced into batches."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsebench.data.files import one_line
from sparsebench.data.folders import IMAGENET_MEAN, IMAGENET_STD, Folder
from sparsebench.data.formats import load_raw
from sparsebench.data.registry import DATASETS, get_spec
from sparsebench.data.stream import ImageSplit, Split
from sparsebench.util.canonical import safetensors_bytes
from sparsebench.util.errors import UsageError, unknown_name
from sparsebench.util.paths import atomic_write

#: Name under which `save_splits` stores `synthetic_splits` data (not a `DATASETS` entry).
SYNTHETIC = "synthetic"
#: Normalisation of synthetic images after scaling to [0, 1], for every channel.
SYNTHETIC_MEAN = 0.5
SYNTHETIC_STD = 0.25

SPLIT_NAMES = ("train", "val", "test")
SPLITS_FORMAT = "sparsebench-splits/1"
_KEYS = tuple(f"{split}_{part}" for split in SPLIT_NAMES for part in "xy")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def split_indices(n_train: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve validation indices out of the official training set.

    Args:
        n_train: Size of the official training set.
        val_size: Number of validation samples, in ``[1, n_train)``.
        seed: Seed of the `torch.Generator` that draws the permutation.

    Returns:
        (train indices, val indices): disjoint, together a permutation of ``range(n_train)``.

    Raises:
        UsageError: For `val_size` out of range (key ``data.val_size``).
    """
    if not _is_int(val_size) or not 1 <= val_size < n_train:
        raise UsageError(
            f"data.val_size: {val_size!r} is out of range; allowed: an integer in "
            f"[1, {n_train}) (the official training set has {n_train} samples)"
        )
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(int(seed)))
    return perm[val_size:], perm[:val_size]


def build_splits(
    dataset: str, raw_dir: Path, *, val_size: int, seed: int, limit: int | None = None
) -> dict[str, torch.Tensor]:
    """Build train/val/test tensors from the raw files in `raw_dir`.

    Args:
        dataset: A `DATASETS` key.
        raw_dir: A directory filled by `fetch_raw`.
        val_size: Validation samples carved from the official training set, in
            ``[1, n_train)``.
        seed: Seed of the permutation that selects the validation set.
        limit: Keep only the first `limit` training samples (after the permutation) and the
            first `limit` test samples, for smoke runs. The validation set keeps `val_size`.

    Returns:
        ``train_x, train_y, val_x, val_y, test_x, test_y``: uint8 (N, C, H, W) images and int64
        (N,) labels. The test set is the official one, in its original order.

    Raises:
        UsageError: For an unknown data set, bad `val_size`/`limit`, or bad raw files.
    """
    spec = get_spec(dataset)
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise UsageError(f"data.limit: {limit!r} is out of range; allowed: null or an integer >= 1")
    (train_x, train_y), (test_x, test_y) = load_raw(spec, Path(raw_dir))
    train_idx, val_idx = split_indices(len(train_x), val_size, seed)
    if limit is not None:
        train_idx, test_x, test_y = train_idx[:limit], test_x[:limit], test_y[:limit]
    return {
        "train_x": train_x[train_idx],
        "train_y": train_y[train_idx],
        "val_x": train_x[val_idx],
        "val_y": train_y[val_idx],
        "test_x": test_x.contiguous(),
        "test_y": test_y.contiguous(),
    }


def synthetic_splits(
    n_train: int = 256,
    n_val: int = 64,
    n_test: int = 64,
    shape: tuple[int, int, int] = (1, 8, 8),
    num_classes: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A small learnable data set in the format of `build_splits`, for tests and smoke runs.

    Each class has a fixed random prototype image (uniform in [0, 255]); a sample is its class
    prototype plus Gaussian noise (std 24 grey levels), rounded and clipped to uint8. Save it
    with ``save_splits(..., dataset=SYNTHETIC)``; it is normalised with mean `SYNTHETIC_MEAN`
    and std `SYNTHETIC_STD` (after scaling to [0, 1]) in every channel.
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand((num_classes, *shape), generator=generator) * 255
    splits = {}
    for name, n in zip(SPLIT_NAMES, (n_train, n_val, n_test), strict=True):
        y = torch.randint(num_classes, (n,), generator=generator, dtype=torch.int64)
        noise = torch.randn((n, *shape), generator=generator) * 24
        splits[f"{name}_x"] = (prototypes[y] + noise).round_().clamp_(0, 255).to(torch.uint8)
        splits[f"{name}_y"] = y
    return splits


def _dataset_meta(
    dataset: str, splits: Mapping[str, torch.Tensor], num_classes: int | None
) -> tuple[tuple[int, ...], int, list[float], list[float]]:
    """(shape, num_classes, mean, std) of a registry data set or of synthetic data."""
    if dataset == SYNTHETIC:
        shape = tuple(int(d) for d in splits["train_x"].shape[1:])
        if num_classes is None:
            labels = [splits[f"{s}_y"] for s in SPLIT_NAMES if len(splits[f"{s}_y"])]
            num_classes = 1 + max((int(y.max()) for y in labels), default=0)
        return shape, num_classes, [SYNTHETIC_MEAN] * shape[0], [SYNTHETIC_STD] * shape[0]
    if dataset not in DATASETS:
        raise unknown_name("data.dataset", dataset, [*DATASETS, SYNTHETIC])
    spec = DATASETS[dataset]
    return spec.shape, num_classes or spec.num_classes, list(spec.mean), list(spec.std)


def save_splits(
    splits: Mapping[str, torch.Tensor],
    path: Path,
    *,
    dataset: str,
    seed: int,
    val_size: int | None = None,
    limit: int | None = None,
    raw_sha256: Mapping[str, str] | None = None,
    num_classes: int | None = None,
) -> None:
    """Write splits to one safetensors file atomically, with provenance metadata.

    Args:
        splits: The output of `build_splits` or `synthetic_splits`.
        path: Destination ``.safetensors`` file (parent directories are created).
        dataset: A `DATASETS` key or `SYNTHETIC`.
        seed: The seed the splits were built with.
        val_size: The validation size asked for; defaults to ``len(splits["val_y"])``.
        limit: The `limit` the splits were built with, if any.
        raw_sha256: SHA-256 of the raw files (see `raw_checksums`).
        num_classes: Overrides the number of classes (synthetic data: inferred from labels).

    Raises:
        ValueError: When `splits` lacks a key or holds tensors of the wrong type or shape.
        UsageError: For an unknown data set name.
    """
    missing = [key for key in _KEYS if key not in splits]
    if missing:
        raise ValueError(f"save_splits: splits lack {', '.join(missing)}")
    shape, n_classes, mean, std = _dataset_meta(dataset, splits, num_classes)
    for split in SPLIT_NAMES:
        x, y = splits[f"{split}_x"], splits[f"{split}_y"]
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(
                f"save_splits: {split}_x must be uint8 (N, {', '.join(map(str, shape))})"
            )
        if y.dtype != torch.int64 or y.shape != (len(x),):
            raise ValueError(f"save_splits: {split}_y must be int64 of length {len(x)}")
    metadata = {
        "format": SPLITS_FORMAT,
        "dataset": dataset,
        "seed": str(int(seed)),
        "val_size": str(int(val_size if val_size is not None else len(splits["val_y"]))),
        "limit": json.dumps(limit),
        "num_classes": str(int(n_classes)),
        "shape": json.dumps([int(d) for d in shape]),
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        "raw_sha256": json.dumps(dict(raw_sha256 or {}), sort_keys=True),
    }
    tensors = {key: splits[key].detach().cpu().contiguous() for key in _KEYS}
    atomic_write(Path(path), safetensors_bytes(tensors, metadata))


def save_image_splits(folder: Folder, manifest: tuple[list[int], list[bytes]], path: Path, *,
                      dataset: str, directory: str, seed: int, val_size: int,
                      limit: int | None, crop: int, resize: int,
                      scale: tuple[float, float]) -> None:
    """Write the splits of an image folder: its manifest and each split's file indices and
    labels (no pixels), atomically, in the format `load_splits` reads.

    Args:
        folder: the scanned folder (`sparsebench.data.folders.scan`).
        manifest: (sizes, SHA-256 digests) of `Folder.files` (`folders.manifest`).
        directory: ``data.dir`` as given (relative paths resolve where the stage runs).
        seed, val_size, limit: as `build_splits`: the validation split is carved from
            ``train/`` by `split_indices`; ``val/`` is the test split; ``limit`` keeps the first
            training and test samples.
        crop, resize, scale: the transforms' sizes (`sparsebench.data.stream.ImageSplit`).
    """
    n_train = len(folder.train)
    train_i, val_i = split_indices(n_train, val_size, seed)
    test_i = torch.arange(n_train, n_train + len(folder.val))
    if limit is not None:
        train_i, test_i = train_i[:limit], test_i[:limit]
    labels = torch.tensor([label for _, label in folder.train + folder.val], dtype=torch.int64)
    sizes, digests = manifest
    names = "\n".join(folder.files()).encode()
    tensors = {
        "files": torch.frombuffer(bytearray(names), dtype=torch.uint8),
        "file_bytes": torch.tensor(sizes, dtype=torch.int64),
        "file_sha256": torch.frombuffer(bytearray(b"".join(digests)),
                                        dtype=torch.uint8).view(-1, 32),
    }
    for split, index in zip(SPLIT_NAMES, (train_i, val_i, test_i), strict=True):
        tensors[f"{split}_i"], tensors[f"{split}_y"] = index.contiguous(), labels[index]
    whole = hashlib.sha256(names + tensors["file_bytes"].numpy().tobytes() + b"".join(digests))
    metadata = {
        "format": SPLITS_FORMAT, "dataset": dataset, "seed": str(int(seed)),
        "val_size": str(int(val_size)), "limit": json.dumps(limit),
        "num_classes": str(len(folder.classes)), "shape": json.dumps([3, crop, crop]),
        "mean": json.dumps(IMAGENET_MEAN), "std": json.dumps(IMAGENET_STD),
        "raw_sha256": json.dumps({"manifest": whole.hexdigest()}),
        "images": json.dumps({"dir": directory, "classes": list(folder.classes), "crop": crop,
                              "resize": resize, "scale": list(scale)}),
    }
    atomic_write(Path(path), safetensors_bytes(tensors, metadata))


@contextlib.contextmanager
def _open_splits(path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Open a splits file; yield (safe_open handle, typed metadata)."""
    from safetensors import safe_open

    allowed = "allowed: a .safetensors file written by save_splits (run the data preparation stage)"
    if not Path(path).is_file():
        raise UsageError(f"splits file: '{path}' does not exist; {allowed}")
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises its own error types
        raise UsageError(
            f"splits file: '{path}' is unreadable ({one_line(exc, 120)}); {allowed}"
        ) from None
    with handle:
        raw = handle.metadata() or {}
        if raw.get("format") != SPLITS_FORMAT:
            raise UsageError(f"splits file: '{path}' has no {SPLITS_FORMAT} metadata; {allowed}")
        try:
            meta = {
                "dataset": raw["dataset"],
                "seed": int(raw["seed"]),
                "val_size": int(raw["val_size"]),
                "limit": json.loads(raw["limit"]),
                "num_classes": int(raw["num_classes"]),
                "shape": tuple(json.loads(raw["shape"])),
                "mean": tuple(json.loads(raw["mean"])),
                "std": tuple(json.loads(raw["std"])),
                "raw_sha256": json.loads(raw["raw_sha256"]),
                "images": json.loads(raw.get("images", "null")),
            }
        except (KeyError, ValueError, TypeError) as exc:
            raise UsageError(
                f"splits file: '{path}' has bad metadata ({exc!r}); {allowed}"
            ) from None
        yield handle, meta


def load_splits(
    path: Path, names: Sequence[str] = ("train", "val")
) -> dict[str, Split]:
    """Load the requested splits as normalised float32 images and int64 labels.

    Only the requested tensors are read from disk: the test split is loaded only when asked for
    (by evaluation). An image folder's splits come back as `ImageSplit` objects, streamed from
    the folder by a `DataLoader` (normalised the same way, batch by batch).

    Args:
        path: A file written by `save_splits`.
        names: Any of ``"train"``, ``"val"``, ``"test"``.

    Returns:
        Split name -> (images float32 (N, C, H, W) as ``(x / 255 - mean) / std`` per channel,
        labels int64 (N,)).

    Raises:
        UsageError: For an unknown split name or a missing or malformed file.
    """
    for name in names:
        if name not in SPLIT_NAMES:
            raise unknown_name("splits", name, SPLIT_NAMES)
    out = {}
    with _open_splits(path) as (handle, meta):
        if meta["images"] is not None:
            return _image_splits(handle, meta, names)
        mean = torch.tensor(meta["mean"], dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(meta["std"], dtype=torch.float32).view(-1, 1, 1)
        for name in names:
            x = handle.get_tensor(f"{name}_x").to(torch.float32).div_(255).sub_(mean).div_(std)
            out[name] = (x, handle.get_tensor(f"{name}_y"))
    return out


def _image_splits(handle: Any, meta: dict[str, Any], names: Sequence[str]
                  ) -> dict[str, ImageSplit]:
    """The named splits of an image folder's splits file, streamed (`ImageSplit`)."""
    images = meta["images"]
    files = bytes(handle.get_tensor("files").numpy()).decode().split("\n")
    out = {}
    for name in names:
        index = handle.get_tensor(f"{name}_i").tolist()
        out[name] = ImageSplit(
            Path(images["dir"]).expanduser(), tuple(files[i] for i in index),
            handle.get_tensor(f"{name}_y"), train=name == "train", crop=images["crop"],
            resize=images["resize"], scale=tuple(images["scale"]), mean=meta["mean"],
            std=meta["std"])
    return out


def dataset_info(path: Path) -> dict[str, Any]:
    """The metadata of a splits file, without reading its tensors.

    Returns:
        ``dataset``, ``num_classes``, ``shape`` (C, H, W), ``mean``, ``std``, ``seed``,
        ``val_size``, ``limit``, ``raw_sha256`` and ``sizes`` (split name -> sample count).
    """
    with _open_splits(path) as (handle, meta):
        meta["sizes"] = {s: int(handle.get_slice(f"{s}_y").get_shape()[0]) for s in SPLIT_NAMES}
    return meta


class Batches:
    """Mini-batches sliced from in-memory tensors; re-iterable, one epoch per iteration.

    Unshuffled batches are views; shuffled ones gather with one index tensor per batch from a
    fresh `torch.randperm` per epoch, drawn from `generator` (so a seeded generator gives the
    same sequence of epochs). No per-sample Python work.

    Args:
        x: Inputs, first dimension = samples.
        y: Targets, same length as `x`.
        batch_size: Samples per batch, >= 1.
        shuffle: Draw a new order each epoch.
        generator: Random source for the order; the global one if None.
        drop_last: Drop the last batch when it is smaller than `batch_size`.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"Batches: x has {len(x)} samples but y has {len(y)}")
        if not _is_int(batch_size) or batch_size < 1:
            raise UsageError(
                f"batch_size: {batch_size!r} is out of range; allowed: an integer >= 1"
            )
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle, self.generator, self.drop_last = shuffle, generator, drop_last

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.batch_size
        starts = range(0, len(self) * size, size)
        if not self.shuffle:
            for start in starts:
                yield self.x[start : start + size], self.y[start : start + size]
            return
        order = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        for start in starts:
            index = order[start : start + size]
            yield self.x[index], self.y[index]
