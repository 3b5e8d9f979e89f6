"""The data sets sparsebench knows: raw-file layouts, checksums and normalisation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sparsebench.util.errors import unknown_name

IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)


@dataclass(frozen=True)
class Layout:
    """One form the raw files of a data set can take on disk.

    Attributes:
        fmt: ``"idx"``, ``"cifar-python"`` or ``"cifar-binary"``: which reader parses the files.
        subdir: Their directory in torchvision's download or the official tarball; a source
            directory may hold the files there or flat.
        train_files: Files of the official training set; for ``idx`` (images, labels).
        test_files: Files of the official test set; for ``idx`` (images, labels).
        extra_files: Further files the reader needs (CIFAR-10 python: ``batches.meta``).
        checksums: File name -> hex digest of its decompressed bytes. Empty for the CIFAR-10
            binary files, which are checked structurally instead (`formats.check_cifar_binary`).
        hash_algorithm: ``hashlib`` name of the digests in `checksums`.
    """

    fmt: str
    subdir: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    extra_files: tuple[str, ...] = ()
    checksums: Mapping[str, str] = field(default_factory=dict)
    hash_algorithm: str = "sha256"

    @property
    def files(self) -> tuple[str, ...]:
        """All file names, training set first."""
        return self.train_files + self.test_files + self.extra_files


@dataclass(frozen=True)
class DatasetSpec:
    """What sparsebench knows about one data set.

    Attributes:
        name: Registry name (the value of ``data.dataset``).
        layouts: The accepted forms of the raw files, preferred first.
        shape: Image shape (C, H, W).
        num_classes: Number of classes; labels are in ``[0, num_classes)``.
        train_size: Samples in the official training set (the validation split is carved from
            it); fixed by the files' digests, so known before the data are fetched.
        mean: Per-channel mean of the images scaled to [0, 1], for normalisation.
        std: Per-channel standard deviation of the images scaled to [0, 1].
        torchvision_class: Class name in ``torchvision.datasets``, for the download.
        offline_source: ``"npm"``, ``"debian"`` or ``None``: the offline package source.
    """

    name: str
    layouts: tuple[Layout, ...]
    shape: tuple[int, int, int]
    num_classes: int
    train_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision_class: str
    offline_source: str | None


def _idx(subdir: str, *digests: str) -> Layout:
    """An MNIST-family layout; `digests` are the SHA-256 of the four files, training set first."""
    names = IDX_TRAIN + IDX_TEST
    return Layout(
        "idx", subdir, IDX_TRAIN, IDX_TEST, checksums=dict(zip(names, digests, strict=True))
    )


#: torchvision.datasets.CIFAR10 ``train_list + test_list`` and ``meta`` (a test keeps them in
#: sync); copied so that checking them needs no torchvision import.
CIFAR_PYTHON = Layout(
    "cifar-python",
    "cifar-10-batches-py",
    CIFAR_TRAIN,
    CIFAR_TEST,
    extra_files=("batches.meta",),
    checksums={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    hash_algorithm="md5",
)
CIFAR_BINARY = Layout(
    "cifar-binary",
    "cifar-10-batches-bin",
    tuple(f"{name}.bin" for name in CIFAR_TRAIN),
    tuple(f"{name}.bin" for name in CIFAR_TEST),
)

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        layouts=(
            _idx(
                "MNIST/raw",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ),
        shape=(1, 28, 28),
        num_classes=10,
        train_size=60_000,
        mean=(0.1307,),
        std=(0.3081,),
        torchvision_class="MNIST",
        offline_source="npm",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        layouts=(
            _idx(
                "FashionMNIST/raw",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
        shape=(1, 28, 28),
        num_classes=10,
        train_size=60_000,
        mean=(0.2860,),
        std=(0.3530,),
        torchvision_class="FashionMNIST",
        offline_source="debian",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        layouts=(CIFAR_PYTHON, CIFAR_BINARY),
        shape=(3, 32, 32),
        num_classes=10,
        train_size=50_000,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        torchvision_class="CIFAR10",
        offline_source=None,
    ),
}


def get_spec(dataset: str) -> DatasetSpec:
    """Return the registry entry of a data set.

    Raises:
        UsageError: For an unknown name (key ``data.dataset``).
    """
    try:
        return DATASETS[dataset]
    except (KeyError, TypeError):
        raise unknown_name("data.dataset", dataset, DATASETS) from None
