"""Data sets: verified raw files, fixed splits on disk and fast in-memory batches.

The data path of a run has two halves:

* prepare: `fetch_raw` puts the verified raw files of a data set into ``raw_dir``
  (`sources`), `build_splits` parses them (`formats`) into uint8 train/val/test tensors (the
  validation set is carved from the official training set by a seeded permutation; the
  official test set is kept untouched) and `save_splits` writes them, with provenance
  metadata, to one safetensors file (`splits`).
* train/evaluate: `load_splits` reads the requested splits as normalised float32 images and
  int64 labels, and `Batches` slices them into mini-batches without per-sample Python work.

Integrity (`registry` holds the digests): MNIST and Fashion-MNIST files are checked by the
SHA-256 of their *decompressed* bytes (gzip wrappers differ between sources, the content does
not). CIFAR-10 is accepted in both official forms. The python batches are checked against
torchvision's md5 list (copied here, kept in sync by a test) and read through torchvision,
which checks them again before unpickling: nothing unverified is unpickled, and this package
never unpickles at all. The binary batches are parsed with numpy; their official per-file
digests are not published, so they are checked structurally (exact size, labels 0..9).
"""

from sparsebench.data.formats import read_idx
from sparsebench.data.registry import DATASETS, DatasetSpec, get_spec
from sparsebench.data.sources import fetch_raw, raw_checksums
from sparsebench.data.splits import (
    SPLIT_NAMES,
    SYNTHETIC,
    Batches,
    build_splits,
    dataset_info,
    load_splits,
    save_splits,
    split_indices,
    synthetic_splits,
)

__all__ = [
    "DATASETS",
    "SPLIT_NAMES",
    "SYNTHETIC",
    "Batches",
    "DatasetSpec",
    "build_splits",
    "dataset_info",
    "fetch_raw",
    "get_spec",
    "load_splits",
    "raw_checksums",
    "read_idx",
    "save_splits",
    "split_indices",
    "synthetic_splits",
]
