"""Image folders: the layout checked before any training, the manifest that makes a changed
folder a new data set, and the streamed loader (same samples whatever its worker count, order
from the run's generator, resumable), with every method family resuming bit for bit on a
torchvision ResNet.

The fixture is a generated folder (`sparsebench.data.example.write_image_folder`): 3 classes,
10 training and 3 validation JPEGs each, 36 to 52 pixels a side, about 50 kB in all."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from conftest import Recording

from sparsebench.core.checkpoints import EpochCheckpoint
from sparsebench.core.train import batches_of, evaluate, seed_everything
from sparsebench.data.example import write_image_folder
from sparsebench.data.folders import manifest, scan
from sparsebench.data.splits import dataset_info, load_splits, save_image_splits
from sparsebench.data.stream import ImageSplit, set_loader_workers
from sparsebench.methods import METHODS, build_method
from sparsebench.methods.base import Context
from sparsebench.util.errors import UsageError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as a run in the pipeline: two OpenMP threads on a loaded 2-core
    machine wait on each other (a ResNet step takes 4x as long)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "root", classes=3,
                              train_per_class=10, val_per_class=3, sizes=(36, 52))


def _prepare(root: Path, out: Path, dataset: str = "imagenet", **sizes) -> Path:
    found = scan(dataset, root)
    save_image_splits(found, manifest(found), out, dataset=dataset, directory=str(root),
                      seed=0, val_size=6, limit=None, crop=sizes.get("crop", 16),
                      resize=sizes.get("resize", 20), scale=(0.3, 1.0))
    return out


@pytest.fixture(scope="module")
def splits(folder, tmp_path_factory) -> dict[str, ImageSplit]:
    path = _prepare(folder, tmp_path_factory.mktemp("prepared") / "splits.safetensors")
    return load_splits(path, ("train", "val", "test"))


def test_the_prepared_file_lists_every_image_with_its_digest(folder, tmp_path):
    path = _prepare(folder, tmp_path / "splits.safetensors")
    info = dataset_info(path)
    assert info["sizes"] == {"train": 24, "val": 6, "test": 9}
    assert info["num_classes"] == 3 and info["shape"] == (3, 16, 16)
    assert info["images"]["classes"] == ["n00000000", "n00000001", "n00000002"]
    data = load_splits(path, ("train", "val", "test"))
    train_files = {f for f in data["train"].files} | set(data["val"].files)
    assert train_files == {p.relative_to(folder).as_posix() for p in folder.glob("train/*/*")}
    for split in data.values():  # a label is its class folder's index
        for rel, label in zip(split.files, split.labels.tolist(), strict=True):
            assert info["images"]["classes"][label] == rel.split("/")[1]
    sizes, digests = manifest(scan("imagenet", folder))
    first = folder / scan("imagenet", folder).files()[0]
    assert digests[0] == hashlib.sha256(first.read_bytes()).digest()
    assert sizes[0] == first.stat().st_size


def test_a_changed_image_changes_the_prepared_file(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "copy")
    before = _prepare(copy, tmp_path / "a.safetensors").read_bytes()
    assert _prepare(copy, tmp_path / "b.safetensors").read_bytes() == before  # deterministic
    victim = next(copy.glob("train/n00000001/*.jpg"))
    shutil.copy(next(copy.glob("train/n00000002/*.jpg")), victim)
    assert _prepare(copy, tmp_path / "c.safetensors").read_bytes() != before


def test_known_digests_are_reused_and_a_touched_file_rehashed(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "copy")
    known = tmp_path / "known.tsv"
    found = scan("imagefolder", copy)
    first = manifest(found, known=known)
    line = known.read_text().splitlines()[0].split("\t")
    fake = "00" * 32  # a remembered digest is used as it is: the file was not read again
    known.write_text(known.read_text().replace(line[3], fake, 1))
    assert manifest(found, known=known)[1][0] == bytes.fromhex(fake)
    (copy / line[0]).write_bytes((copy / line[0]).read_bytes())  # a new mtime: read again
    assert manifest(found, known=known) == first


def test_samples_do_not_depend_on_the_loader_workers(splits):
    def first_epoch(workers: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        set_loader_workers(workers)
        return list(batches_of(splits["train"], 8, device=CPU, shuffle=True,
                               generator=torch.Generator().manual_seed(3)))

    try:
        alone, two = first_epoch(0), first_epoch(2)
    finally:
        set_loader_workers(2)
    assert len(alone) == 3
    for (xa, ya, na), (xb, yb, nb) in zip(alone, two, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and na == nb == 8
    order = torch.randperm(24, generator=torch.Generator().manual_seed(3))
    assert torch.equal(alone[0][1], splits["train"].labels[order[:8]])  # the run's order
    assert abs(float(torch.cat([x for x, _, _ in alone]).mean())) < 1.5  # normalised


def test_training_crops_are_random_and_evaluation_crops_fixed(splits):
    set_loader_workers(0)
    try:
        g = torch.Generator().manual_seed(0)
        one = next(iter(batches_of(splits["train"], 4, device=CPU, generator=g)))[0]
        two = next(iter(batches_of(splits["train"], 4, device=CPU, generator=g)))[0]
        test = [next(iter(batches_of(splits["test"], 4, device=CPU)))[0] for _ in range(2)]
    finally:
        set_loader_workers(2)
    assert not torch.equal(one, two)  # a new augmentation seed each epoch
    assert torch.equal(test[0], test[1]) and test[0].shape == (4, 3, 16, 16)


CASES = {  # one method of each family: two epochs (iterations) of one batch
    "gmp": {"target_sparsity": 0.8, "epochs": 2, "start_epoch": 0, "end_epoch": 2,
            "frequency": 1, "batch_size": 24},
    "admm": {"target_sparsity": 0.8, "iterations": 2, "epochs_per_iteration": 1,
             "rho": 0.01, "batch_size": 24},
    "sas_admm": {"target_sparsity": 0.8, "iterations": 2, "M": 1, "k0": 1, "last": 1,
                 "batch_size": 24},
    "grda": {"epochs": 2, "lr": 0.05, "c": 0.01, "mu": 0.6, "batch_size": 24},
    "linbreg": {"epochs": 2, "lr": 0.05, "lam": 0.1, "momentum": 0.9, "batch_size": 24},
}


def _resnet_run(key: str, splits: dict, checkpoint: EpochCheckpoint):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    method = build_method(key, METHODS[key].Params(method=key, **CASES[key]))
    ctx = Context(train=splits["train"], val=splits["val"], device=CPU,
                  generator=seed_everything(0), seed=0, checkpoint=checkpoint)
    curves = method.prune(model, ctx)
    return model, [{k: v for k, v in row.items() if k != "seconds"} for row in curves]


@pytest.mark.parametrize("key", CASES)
def test_each_family_resumes_on_a_resnet_from_the_folder_bit_for_bit(key, splits, tmp_path):
    """Killed after its first epoch (iteration), resumed from that checkpoint: the weights
    and curves of the uninterrupted run, with one loader worker process."""
    set_loader_workers(1)
    try:
        snapshots = tmp_path / "snapshots"
        snapshots.mkdir()
        model, curves = _resnet_run(key, splits, Recording(tmp_path / "full.pt", snapshots))
        saved = sorted(snapshots.iterdir())
        assert len(saved) >= 2
        shutil.copy(saved[0], tmp_path / "resume.pt")
        resumed, again = _resnet_run(key, splits, EpochCheckpoint(tmp_path / "resume.pt"))
    finally:
        set_loader_workers(2)
    assert again == curves
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), f"{key}: {name} differs after resuming"
    assert 0 <= evaluate(model, splits["test"])[1] <= 1


def _layout_error(root: Path, dataset: str = "imagefolder") -> str:
    with pytest.raises(UsageError) as info:
        found = scan(dataset, root)
        manifest(found)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_a_bad_folder_is_refused_in_one_line_naming_it(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "copy")
    broken = copy / "train/n00000001/broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg at all")
    assert f"data.dir: image {str(broken)!r} is unreadable" in _layout_error(copy)
    broken.unlink()
    empty = copy / "train/n00000009"
    empty.mkdir()
    assert f"class folder {str(empty)!r} holds no image" in _layout_error(copy)
    empty.rmdir()
    stray = copy / "val/n00000007"
    shutil.copytree(copy / "val/n00000000", stray)
    assert f"class folder {str(stray)!r} is not in train/" in _layout_error(copy)
    shutil.rmtree(stray)
    shutil.rmtree(copy / "val")
    assert f"data.dir: {str(copy)!r} has no val/ folder" in _layout_error(copy)


def test_imagenet_needs_its_layout(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "copy")
    for part in ("train", "val"):
        (copy / part / "n00000002").rename(copy / part / "dogs")
    assert "is not named by a WordNet id" in _layout_error(copy, "imagenet")
    assert scan("imagefolder", copy).classes[-1] == "n00000001"  # any names for imagefolder
    for part in ("train", "val"):
        (copy / part / "dogs").rename(copy / part / "n00000002")
    loose = copy / "val" / "loose.jpg"
    shutil.copy(next(copy.glob("val/n00000000/*.jpg")), loose)
    assert f"data.dir: {str(loose)!r} lies loose in val/" in _layout_error(copy, "imagenet")
