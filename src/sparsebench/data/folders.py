"""Image folders: torchvision's ``ImageFolder`` layout, checked and listed before any training.

A root holds ``train/<class>/<image>`` and ``val/<class>/<image>`` (the layout of
``torchvision.datasets.ImageFolder`` and of most ImageNet copies after the usual ``valprep``
step). ``train/`` gives the classes (its sub-folders, sorted: label i is the i-th) and the
training and validation splits (the validation split is carved from it by `split_indices`, as
for every data set); ``val/`` serves as the test split. Files count when their extension is one
of torchvision's ``IMG_EXTENSIONS`` (any case); others are ignored, as ``ImageFolder`` does.

``imagenet`` is the same layout, checked further: every class folder of ``train/`` and ``val/``
is a WordNet id (``n`` and eight digits, ``n01440764``), and ``val/`` holds no loose images (the
flat validation folder of the ILSVRC-2012 tarball must be sorted into class folders first).
Any number of WordNet-id classes is accepted (ImageNet-1k has 1,000; subsets such as
Imagenette keep the ids).

The manifest lists every file with its size and SHA-256 (the prepare stage writes it into the
prepared splits file, so DVC and every run's fingerprint see a changed folder). Each file is
opened and checked by Pillow (``Image.verify``: header and structure) while it is hashed, so an
unreadable image is refused in one line naming it before any training. Digests are kept between
prepares (keyed by path, size and modification time), so the prepare stage of an image-folder
suite can run on every ``dvc repro`` (``always_changed``) at the cost of a directory walk.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sparsebench.data.files import one_line
from sparsebench.util.errors import UsageError

#: ``data.dataset`` values read from an image folder
FOLDER_DATASETS = ("imagefolder", "imagenet")
WORDNET_ID = re.compile(r"n\d{8}")
#: the ILSVRC-2012 training set's images
IMAGENET_TRAIN_SIZE = 1_281_167
#: ImageNet's per-channel mean and std of images scaled to [0, 1] (torchvision's references),
#: used for every image folder
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


@dataclass(frozen=True)
class Folder:
    """A scanned image folder: class names and, per part, (relative path, label) pairs."""

    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]

    def files(self) -> list[str]:
        """Every relative path, ``train/`` first, in label then name order."""
        return [path for path, _ in self.train + self.val]


def _subfolders(part: Path) -> list[os.DirEntry]:
    with os.scandir(part) as entries:
        return sorted((e for e in entries if e.is_dir() and not e.name.startswith(".")),
                      key=lambda e: e.name)


def _images(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries
                      if e.is_file() and e.name.lower().endswith(extensions)
                      and not e.name.startswith("."))


def scan(dataset: str, root: Path) -> Folder:
    """List the image folder ``root`` for ``data.dataset`` (``imagefolder`` or ``imagenet``).

    Raises:
        UsageError: One line naming the folder: no ``train/`` or ``val/``, no class folder, an
            empty class folder, a class of ``val/`` missing from ``train/``; for ``imagenet``
            a class folder not named by a WordNet id, or loose images in ``val/``.
    """
    layout = ("allowed: a folder with train/<class>/<image> and val/<class>/<image> "
              "(torchvision's ImageFolder layout)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"data.dir: {str(root)!r} is not a directory; {layout}")
    extensions = _extensions()
    parts: dict[str, list[tuple[str, int]]] = {}
    classes: list[str] = []
    for name in ("train", "val"):
        part = root / name
        if not part.is_dir():
            raise UsageError(f"data.dir: {str(root)!r} has no {name}/ folder; {layout}")
        folders = _subfolders(part)
        if not folders:
            raise UsageError(f"data.dir: {str(part)!r} has no class folders; {layout}")
        if dataset == "imagenet":
            _check_imagenet(part, folders, extensions)
        if name == "train":
            classes = [f.name for f in folders]
        label = {c: i for i, c in enumerate(classes)}
        rows = []
        for folder in folders:
            if folder.name not in label:
                raise UsageError(f"data.dir: class folder {str(Path(folder.path))!r} is not in "
                                 f"train/; allowed: val/ classes that train/ has")
            images = _images(Path(folder.path), extensions)
            if not images:
                raise UsageError(f"data.dir: class folder {str(Path(folder.path))!r} holds no "
                                 f"image ({', '.join(extensions)}); allowed: one image or more")
            rows += [(f"{name}/{folder.name}/{image}", label[folder.name]) for image in images]
        parts[name] = rows
    return Folder(root, tuple(classes), tuple(parts["train"]), tuple(parts["val"]))


def _check_imagenet(part: Path, folders: list[os.DirEntry], extensions: tuple[str, ...]) -> None:
    bad = next((f.name for f in folders if not WORDNET_ID.fullmatch(f.name)), None)
    if bad is not None:
        raise UsageError(f"data.dir: {str(part / bad)!r} is not named by a WordNet id; allowed "
                         "for data.dataset imagenet: class folders n######## (n01440764, ...); "
                         "use data.dataset imagefolder for other names")
    loose = _images(part, extensions)
    if loose:
        raise UsageError(f"data.dir: {str(part / loose[0])!r} lies loose in {part.name}/; "
                         "allowed for imagenet: every image in its class folder (sort the "
                         "ILSVRC-2012 validation images into WordNet-id folders first)")


def _check_file(root: Path, relative: str) -> tuple[int, bytes]:
    """(size, SHA-256) of one image, after Pillow has checked it."""
    from PIL import Image, UnidentifiedImageError

    path = root / relative
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise UsageError(f"data.dir: image {str(path)!r} is unreadable "
                         f"({one_line(exc, 100)}); allowed: images Pillow can open") from None
    return len(data), hashlib.sha256(data).digest()


def manifest(folder: Folder, threads: int = 4, known: Path | None = None
             ) -> tuple[list[int], list[bytes]]:
    """Sizes and SHA-256 digests of every file of `Folder.files`, each checked (see module
    docstring), on ``threads`` threads.

    ``known``: a file of digests from an earlier call (path, size, mtime, digest per line),
    read and rewritten here: a file whose size and modification time are unchanged keeps its
    digest unread, so preparing an unchanged ImageNet again costs a directory walk.

    Raises:
        UsageError: For the first unreadable image, naming it.
    """
    files = folder.files()
    stats = [(folder.root / rel).stat() for rel in files]
    old = _read_known(known) if known is not None else {}
    todo = [i for i, (rel, st) in enumerate(zip(files, stats, strict=True))
            if old.get(rel, (None, None))[0] != (st.st_size, st.st_mtime_ns)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        fresh = dict(zip(todo, pool.map(lambda i: _check_file(folder.root, files[i]), todo),
                         strict=True))
    rows = [fresh[i] if i in fresh else (stats[i].st_size, old[rel][1])
            for i, rel in enumerate(files)]
    if known is not None:
        known.parent.mkdir(parents=True, exist_ok=True)
        known.write_text("".join(
            f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{digest.hex()}\n"
            for rel, st, (_, digest) in zip(files, stats, rows, strict=True)))
    return [size for size, _ in rows], [digest for _, digest in rows]


def _read_known(path: Path) -> dict[str, tuple[tuple[int, int], bytes]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    known = {}
    for line in lines:
        rel, size, mtime, digest = line.split("\t")
        known[rel] = ((int(size), int(mtime)), bytes.fromhex(digest))
    return known
