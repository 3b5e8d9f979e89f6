"""Reading the compressed checkpoint: `load`, `verify`, `inspect` (format:
`checkpoint.fileformat`, DESIGN.md "Compressed checkpoint").

The file is untrusted: safetensors parses it (no pickle, nothing executed), the checksum is
checked before anything is decompressed or decoded, every metadata value is checked against the
architecture, a coded payload must decompress to exactly the length the metadata implies (and
never yields more: no decompression bombs), and every payload tensor must be consumed exactly.
Each failure is one `UsageError` line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from sparsebench.checkpoint import codec
from sparsebench.checkpoint.encoding import DELTA_TYPES, ENCODINGS, Encoded, decode
from sparsebench.checkpoint.fileformat import (
    DTYPE_NAMES,
    DTYPES,
    FORMAT,
    Layout,
    arch_layout,
    blob_dtype,
    index_blob,
    payload_sha256,
    rest_digest,
)
from sparsebench.util.errors import UsageError


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def read_file(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and payload tensors of a ``sparsebench-ckpt/1`` file (nothing decoded yet).

    Args:
        path: The file.

    Returns:
        The string metadata and the payload tensors by name, as stored.

    Raises:
        UsageError: If the file is missing, not safetensors (e.g. a pickle, which is never
            unpickled), or of another format.
    """
    where = f"checkpoint {str(path)!r}"
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise UsageError(f"{where}: format {metadata.get('format')!r} is not "
                                 f"supported; allowed: {FORMAT}")
            blobs = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise UsageError(f"{where}: not a readable safetensors file ({_one_line(exc)})") from None
    return metadata, blobs


def _json(metadata: dict[str, str], key: str, kind: type, where: str) -> Any:
    try:
        value = json.loads(metadata[key])
    except (KeyError, ValueError):
        value = None
    if not isinstance(value, kind):
        raise UsageError(f"{where}: metadata {key!r} is missing or malformed; "
                         f"allowed: a JSON {kind.__name__}")
    return value


def _codecs(metadata: dict[str, str], blobs: dict[str, torch.Tensor],
            where: str) -> dict[str, tuple[str, int]]:
    """The ``codecs`` entries, checked for form: payload name -> (codec, raw bytes)."""
    if "codecs" not in metadata:
        return {}
    codecs = _json(metadata, "codecs", dict, where)
    for name, entry in codecs.items():
        ok = isinstance(entry, list) and len(entry) == 2 and entry[0] in codec.CODECS
        if not ok or not isinstance(entry[1], int) or isinstance(entry[1], bool):
            raise UsageError(f"{where}: codecs[{name!r}]: {entry!r} is malformed; allowed: "
                             f"[codec, raw bytes] with codec one of {', '.join(codec.CODECS)}")
        if name not in blobs or blob_dtype(name) is None:
            raise UsageError(f"{where}: codecs[{name!r}]: the file holds no such payload")
    return {name: (method, raw_bytes) for name, (method, raw_bytes) in codecs.items()}


def _check_blobs(blobs: dict[str, torch.Tensor], metadata: dict[str, str],
                 where: str) -> dict[str, tuple[str, int]]:
    """Check the payload tensors' names, dtypes and checksum; return the ``codecs`` entries."""
    codecs = _codecs(metadata, blobs, where)
    for name, blob in blobs.items():
        dtype = torch.uint8 if name in codecs else blob_dtype(name)
        if not (blob.dtype == dtype and blob.dim() == 1):
            raise UsageError(f"{where}: payload tensor {name!r} ({blob.dtype}, "
                             f"{blob.dim()}-D) is not part of {FORMAT}")
    if payload_sha256(blobs) != metadata.get("sha256"):
        raise UsageError(f"{where}: checksum mismatch (sha256); the file is damaged or edited")
    return codecs


class _Payload:
    """Hands out consecutive pieces of the payload tensors, in canonical order."""

    def __init__(self, blobs: dict[str, torch.Tensor]) -> None:
        self.blobs = blobs
        self.pos = dict.fromkeys(blobs, 0)
        self.finals: dict[str, np.ndarray] = {}
        self.placed = dict.fromkeys(blobs, 0)  # nonzeros placed so far, per delta stream

    def take(self, name: str, count: int) -> torch.Tensor:
        blob = self.blobs.get(name, torch.zeros(0))
        start = self.pos.get(name, 0)
        if start + count > blob.numel():
            raise ValueError(f"payload {name!r} is shorter than the metadata describes")
        self.pos[name] = start + count
        return blob[start : start + count]

    def take_delta(self, encoding: str, nonzeros: int) -> np.ndarray:
        """A delta stream: up to and including the entry that places its last nonzero."""
        name = index_blob(encoding)
        if nonzeros == 0:
            return np.zeros(0, DELTA_TYPES[encoding])
        if name not in self.finals:  # positions of all non-escape entries, found once
            top = np.iinfo(DELTA_TYPES[encoding]).max
            stream = self.blobs[name].numpy() if name in self.blobs else np.zeros(0)
            self.finals[name] = np.flatnonzero(stream != top)
        placed = self.placed.get(name, 0) + nonzeros
        if placed > self.finals[name].size:
            raise ValueError(f"payload {name!r} is shorter than the metadata describes")
        self.placed[name] = placed
        end = int(self.finals[name][placed - 1]) + 1
        return self.take(name, end - self.pos[name]).numpy()

    def check_consumed(self) -> None:
        for name, blob in self.blobs.items():
            if self.pos[name] != blob.numel():
                raise ValueError(f"payload {name!r} holds {blob.numel() - self.pos[name]} "
                                 "elements the metadata does not describe")


def _entry(name: str, entry: Any, layout: Layout, where: str) -> tuple[torch.dtype, str, int]:
    """Check one ``tensors`` entry against the architecture; return dtype, encoding, nonzeros."""
    key = f"{where}: tensors[{name!r}]"
    if name not in layout:
        raise UsageError(f"{key}: not a tensor of this architecture; "
                         "allowed: a state_dict key of the model that arch builds")
    ok = isinstance(entry, list) and len(entry) == 5 and isinstance(entry[0], list)
    if not ok or entry[1] not in DTYPES or entry[2] not in ENCODINGS:
        raise UsageError(f"{key}: {entry!r} is malformed; allowed: "
                         "[shape, dtype, encoding, nonzeros, sparsity]")
    shape, dtype, encoding, nonzeros, sparsity = entry
    if shape != list(layout[name]):
        raise UsageError(f"{key}.shape: {shape} does not match the architecture; allowed: "
                         f"{list(layout[name])}")
    numel = math.prod(shape)
    valid = isinstance(nonzeros, int) and 0 <= nonzeros <= numel
    if not valid or not isinstance(sparsity, (int, float)):
        raise UsageError(f"{key}.nonzeros: {nonzeros!r} is invalid; allowed: 0..{numel}")
    if numel and abs(sparsity - (1 - nonzeros / numel)) > 1e-4:
        raise UsageError(f"{key}.sparsity: {sparsity!r} disagrees with {nonzeros} nonzeros")
    return DTYPES[dtype], encoding, nonzeros


def _rest_dtypes(runs: Any, count: int, where: str) -> list[torch.dtype]:
    """Expand the ``rest.dtypes`` runs, which must cover exactly ``count`` tensors."""
    ok = isinstance(runs, list) and all(
        isinstance(r, list) and len(r) == 2 and r[0] in DTYPES
        and isinstance(r[1], int) and 0 < r[1] <= count
        for r in runs
    )  # fmt: skip
    if not ok or sum(r[1] for r in runs) != count:
        raise UsageError(f"{where}: rest.dtypes: {runs!r} is malformed; allowed: "
                         f"[[dtype, count], ...] covering the {count} dense tensors")
    return [DTYPES[d] for d, n in runs for _ in range(n)]


def _raw_lengths(
    checked: dict[str, tuple[torch.dtype, str, int]], rest: dict[str, torch.dtype], layout: Layout
) -> dict[str, tuple[int, int]]:
    """Elements each payload must hold by the checked metadata, as (least, most): exact except
    for delta streams, whose escapes the metadata does not count (at most one per ``M``
    positions of the gaps, ``M`` the type's maximum)."""
    lengths: dict[str, list[int]] = {}

    def add(name: str, least: int, most: int) -> None:
        span = lengths.setdefault(name, [0, 0])
        span[0] += least
        span[1] += most

    for name, shape in layout.items():
        numel = math.prod(shape)
        dtype, encoding, nonzeros = checked.get(name) or (rest[name], "dense", numel)
        data = f"data.{DTYPE_NAMES[dtype]}"
        if encoding == "dense":
            add(data, numel, numel)
            continue
        add(data, nonzeros, nonzeros)
        if encoding == "bitmask":
            add(index_blob(encoding), math.ceil(numel / 8), math.ceil(numel / 8))
        elif nonzeros:
            top = int(np.iinfo(DELTA_TYPES[encoding]).max)
            add(index_blob(encoding), nonzeros, nonzeros + (numel - nonzeros) // top)
    return {name: (least, most) for name, (least, most) in lengths.items()}


def _decompress(blobs: dict[str, torch.Tensor], codecs: dict[str, tuple[str, int]],
                lengths: dict[str, tuple[int, int]], where: str) -> dict[str, torch.Tensor]:
    """The payload tensors with every coded one decompressed into its dtype."""
    out = dict(blobs)
    for name, (method, raw_bytes) in codecs.items():
        dtype = blob_dtype(name) or torch.uint8  # _codecs checked that the name is known
        itemsize = dtype.itemsize
        least, most = (n * itemsize for n in lengths.get(name, (0, 0)))
        key = f"{where}: payload {name!r} ({method})"
        if not least <= raw_bytes <= most or raw_bytes % itemsize:
            allowed = f"{least}" if least == most else f"{least}..{most}, in whole elements"
            raise UsageError(f"{key}: {raw_bytes} raw bytes declared; allowed: {allowed}, as "
                             "the tensors metadata implies")
        try:
            raw = codec.decompress(method, blobs[name].numpy().tobytes(), raw_bytes, itemsize)
        except ValueError as exc:
            raise UsageError(f"{key}: {exc}") from None
        out[name] = torch.frombuffer(bytearray(raw), dtype=dtype)
    return out


def _take_encoded(payload: _Payload, dtype: torch.dtype, encoding: str, nonzeros: int,
                  numel: int) -> Encoded:
    data = f"data.{DTYPE_NAMES[dtype]}"
    if encoding == "dense":
        return Encoded("dense", nonzeros, payload.take(data, numel), np.zeros(0, np.uint8))
    if encoding == "bitmask":
        index = payload.take(index_blob(encoding), math.ceil(numel / 8)).numpy()
    else:
        index = payload.take_delta(encoding, nonzeros)
    return Encoded(encoding, nonzeros, payload.take(data, nonzeros), index)


def _decode_one(payload: _Payload, shape: tuple[int, ...], dtype: torch.dtype, encoding: str,
                nonzeros: int | None) -> tuple[torch.Tensor, dict[str, Any]]:
    numel = math.prod(shape)
    enc = _take_encoded(payload, dtype, encoding, nonzeros or 0, numel)
    tensor = decode(enc, shape, dtype)
    counted = int(torch.count_nonzero(tensor))
    if nonzeros is not None and counted != nonzeros:
        raise ValueError(f"{nonzeros} nonzeros declared, {counted} stored")
    return tensor, {
        "shape": list(shape), "dtype": DTYPE_NAMES[dtype], "numel": numel,
        "nonzeros": counted, "encoding": encoding, "bytes": enc.nbytes,
        "dense_bytes": numel * tensor.element_size(),
    }  # fmt: skip


def decode_state(
    metadata: dict[str, str], blobs: dict[str, torch.Tensor], layout: Layout, where: str,
    codecs: dict[str, tuple[str, int]] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Decompress the coded payloads and decode every tensor, checking it all.

    Args:
        metadata: The file's string metadata (`read_file`).
        blobs: Its payload tensors, as stored.
        layout: The architecture's state_dict names -> shapes (`arch_layout`).
        where: The prefix of every error message.
        codecs: The checked ``codecs`` entries (payload name -> (codec, raw bytes)); None or
            empty: every payload raw.

    Returns:
        The state_dict, and one inspection row per tensor (see `inspect`).

    Raises:
        sparsebench.util.errors.UsageError: One line, for metadata that does not match the
            architecture or the payloads, or a payload that does not decode.
    """
    entries = _json(metadata, "tensors", dict, where)
    rest_meta = _json(metadata, "rest", dict, where)
    checked = {n: _entry(n, e, layout, where) for n, e in entries.items()}
    rest = [n for n in layout if n not in checked]
    rest_dtypes = dict(zip(rest, _rest_dtypes(rest_meta.get("dtypes"), len(rest), where),
                           strict=True))
    if rest_meta.get("layout") != rest_digest(layout, rest):
        raise UsageError(f"{where}: rest.layout: the dense tensors do not match this "
                         "architecture; allowed: a file written for the same model definition")
    if codecs:
        blobs = _decompress(blobs, codecs, _raw_lengths(checked, rest_dtypes, layout), where)
    payload, state, rows = _Payload(blobs), {}, []
    for name, shape in layout.items():
        # the dense rest: dtype from the runs; nonzeros are counted, not declared
        spec = checked.get(name) or (rest_dtypes[name], "dense", None)
        try:
            state[name], row = _decode_one(payload, shape, *spec)
        except ValueError as exc:
            raise UsageError(f"{where}: tensor {name!r}: {exc}") from None
        rows.append({"name": name, **row, "prunable": name in checked})
    try:
        payload.check_consumed()
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None
    return state, rows


def _read(path: str | Path, trust_code: bool = False
          ) -> tuple[nn.Module, dict[str, torch.Tensor], list[dict[str, Any]],
                     list[dict[str, Any]]]:
    where = f"checkpoint {str(path)!r}"
    metadata, blobs = read_file(path)
    codecs = _check_blobs(blobs, metadata, where)
    model, layout = arch_layout(_json(metadata, "arch", dict, where), f"{where}: ",
                                trust_code=trust_code)
    state, rows = decode_state(metadata, blobs, layout, where, codecs)
    payloads = [
        {"name": name, "codec": codecs.get(name, ("raw",))[0],
         "raw_bytes": codecs[name][1] if name in codecs else blob.numel() * blob.element_size(),
         "stored_bytes": blob.numel() * blob.element_size()}
        for name, blob in sorted(blobs.items())
    ]  # fmt: skip
    return model, state, rows, payloads


def verify(path: str | Path) -> None:
    """Check a checkpoint completely: checksum, metadata, architecture and every tensor.

    Args:
        path: A file written by `save`.

    Raises:
        UsageError: One line naming the file and what is wrong.

    Examples:
        A file written by `save` passes; one flipped bit fails the checksum:

        >>> import pathlib, tempfile
        >>> import torch
        >>> from sparsebench.checkpoint import save, verify
        >>> from sparsebench.core.models import build_model
        >>> from sparsebench.core.sparsity import apply_masks, magnitude_masks
        >>> _ = torch.manual_seed(0)
        >>> model = build_model("mlp", widths=(32,), in_channels=1, image_size=4, num_classes=3)
        >>> apply_masks(model, magnitude_masks(model, 0.9))
        >>> from sparsebench.util.errors import UsageError
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "model.sparse.safetensors"
        ...     save(model, path)
        ...     verify(path)  # nothing raised
        ...     data = bytearray(path.read_bytes())
        ...     data[-1] ^= 1
        ...     _ = path.write_bytes(data)
        ...     try:
        ...         verify(path)
        ...     except UsageError as exc:
        ...         print(str(exc).split(": ", 1)[1])
        checksum mismatch (sha256); the file is damaged or edited
    """
    _read(path)


def load(path: str | Path, device: torch.device | str = "cpu", *,
         trust_code: bool = False) -> nn.Module:
    """Rebuild the model written by `save`, exactly: same tensors, dtypes and outputs.

    Nothing in the file is executed: it is safetensors (never unpickled), the architecture is
    looked up by name in the model registry (or torchvision's), and the whole file is verified
    (see `verify`) before any of it reaches the model. A user's architecture
    (``<module>:<callable>``) runs that module's code: it is refused unless ``trust_code``.

    Args:
        path: A file written by `save`.
        device: Where to put the model.
        trust_code: Rebuild a user's architecture (a file you trust, as the pipeline's own).

    Returns:
        The model, carrying ``model.arch``.

    Raises:
        UsageError: One line, for a missing, truncated, damaged, edited or foreign file.

    Examples:
        A round trip of a pruned model: the same weights (the masks folded in), the same
        outputs, the same sparsity:

        >>> import pathlib, tempfile
        >>> import torch
        >>> from sparsebench.checkpoint import load, save
        >>> from sparsebench.core.models import build_model
        >>> from sparsebench.core.sparsity import apply_masks, magnitude_masks
        >>> _ = torch.manual_seed(0)
        >>> model = build_model("mlp", widths=(32,), in_channels=1, image_size=4, num_classes=3)
        >>> apply_masks(model, magnitude_masks(model, 0.9))
        >>> from sparsebench.core.metrics import sparsity_summary
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "model.sparse.safetensors"
        ...     save(model, path)
        ...     loaded = load(path)
        >>> all(torch.equal(loaded.layers[i].weight, model.layers[i].weight) for i in (1, 3))
        True
        >>> x = torch.randn(5, 1, 4, 4)
        >>> torch.equal(loaded(x), model(x))
        True
        >>> sparsity_summary(loaded)["sparsity"] == sparsity_summary(model)["sparsity"]
        True
    """
    model, state, _, _ = _read(path, trust_code)
    model.load_state_dict(state, assign=True)  # takes the stored tensors and their dtypes
    return model.to(device)


def inspect(path: str | Path) -> list[dict[str, Any]]:
    """One row per tensor of a checkpoint, in canonical order, after verifying it.

    Args:
        path: A file written by `save`.

    Returns:
        Dicts with ``name``, ``shape``, ``dtype``, ``numel``, ``nonzeros``, ``encoding``,
        ``bytes`` (its encoded payload, before the codec stage: see `inspect_all`),
        ``dense_bytes`` and ``prunable``.

    Raises:
        UsageError: One line, as `verify`.

    Examples:
        The pruned weights take a sparse encoding, the biases are stored dense:

        >>> import pathlib, tempfile
        >>> import torch
        >>> from sparsebench.checkpoint import inspect, save
        >>> from sparsebench.core.models import build_model
        >>> from sparsebench.core.sparsity import apply_masks, magnitude_masks
        >>> _ = torch.manual_seed(0)
        >>> model = build_model("mlp", widths=(32,), in_channels=1, image_size=4, num_classes=3)
        >>> apply_masks(model, magnitude_masks(model, 0.9))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "model.sparse.safetensors"
        ...     save(model, path)
        ...     rows = inspect(path)
        >>> [(r["name"], r["encoding"], r["nonzeros"], r["numel"]) for r in rows]
        [('layers.1.weight', 'delta-u8', 51, 512), ('layers.1.bias', 'dense', 32, 32),
         ('layers.3.weight', 'delta-u8', 10, 96), ('layers.3.bias', 'dense', 3, 3)]
    """
    return _read(path)[2]


def inspect_all(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of `inspect`, and one row per payload tensor in name order, after verifying.

    Args:
        path: A file written by `save`.

    Returns:
        The tensor rows, and the payload rows: dicts with ``name``, ``codec`` (``raw`` or one
        of `codec.CODECS`), ``raw_bytes`` (before the codec stage) and ``stored_bytes``.

    Raises:
        UsageError: One line, as `verify`.
    """
    _, _, rows, payloads = _read(path)
    return rows, payloads
