"""The ``prepare`` stage: obtain the raw data (checksums decide, not the source) and write the
fixed splits.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sparsebench.data import (
    SYNTHETIC,
    build_splits,
    dataset_info,
    fetch_raw,
    raw_checksums,
    save_splits,
    synthetic_splits,
)
from sparsebench.data.folders import FOLDER_DATASETS, manifest, scan
from sparsebench.data.splits import save_image_splits
from sparsebench.suite.params import Params
from sparsebench.suite.plan import DATA_FILE
from sparsebench.util.paths import repo_root


def prepare(params: Params) -> None:
    """Obtain the raw data (checksums decide, not the source) and write the fixed splits."""
    d = params.data
    if d.dataset in FOLDER_DATASETS:  # listed, each file hashed and checked: no pixels kept
        folder = scan(d.dataset, Path(d.dir))
        known = repo_root() / ".cache" / "sparsebench" / "manifests" / (
            hashlib.sha256(str(folder.root.resolve()).encode()).hexdigest()[:16] + ".tsv")
        save_image_splits(folder, manifest(folder, max(4, d.loader_workers), known), DATA_FILE,
                          dataset=d.dataset, directory=str(folder.root.resolve()),
                          seed=d.split_seed,
                          val_size=d.val_size, limit=d.limit, crop=d.crop, resize=d.resize,
                          scale=tuple(d.crop_scale))
        sizes = dataset_info(DATA_FILE)["sizes"]
        print(f"prepare: {d.dataset} {sizes} {len(folder.classes)} classes from {d.dir}")
        return
    if d.dataset == SYNTHETIC:  # tests and smoke runs: no files, no network
        splits = synthetic_splits(n_train=d.limit or 256, n_val=d.val_size, n_test=d.limit or 64,
                                  shape=d.synthetic_shape, num_classes=d.synthetic_classes,
                                  seed=d.split_seed)
        source, checksums = "", {}
    else:
        raw_dir = repo_root() / ".cache" / "sparsebench" / "raw" / d.dataset
        source_dir = Path(d.dir).expanduser() if d.dir else None
        source = fetch_raw(d.dataset, raw_dir, source_dir=source_dir,
                           cache_dir=repo_root() / ".cache" / "sparsebench" / "sources")
        splits = build_splits(d.dataset, raw_dir, val_size=d.val_size, seed=d.split_seed,
                              limit=d.limit)
        checksums = raw_checksums(d.dataset, raw_dir)
    save_splits(splits, DATA_FILE, dataset=d.dataset, seed=d.split_seed, val_size=d.val_size,
                limit=d.limit, raw_sha256=checksums)
    sizes = {k[:-2]: len(v) for k, v in splits.items() if k.endswith("_y")}
    print(f"prepare: {d.dataset} {sizes} {source}".rstrip())
