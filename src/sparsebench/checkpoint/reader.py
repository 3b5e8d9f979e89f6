"""Reading the compressed checkpoint: `load`, `verify`, `inspect` (format:
`checkpoint.fileformat`, DESIGN.md "Compressed checkpoint").

The file is untrusted: safetensors parses it (no pickle, nothing executed), the checksum is
checked before anything is decoded, every metadata value is checked against the architecture,
and every payload tensor must be consumed exactly. Each failure is one `UsageError` line.
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

from sparsebench.checkpoint.encoding import DELTA_TYPES, ENCODINGS, Encoded, decode
from sparsebench.checkpoint.fileformat import (
    DTYPE_NAMES,
    DTYPES,
    FORMAT,
    INDEX_BLOBS,
    Layout,
    arch_layout,
    index_blob,
    payload_sha256,
    rest_digest,
)
from sparsebench.errors import UsageError


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def read_file(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and payload tensors of a ``sparsebench-ckpt/1`` file (nothing decoded yet).

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


def _check_blobs(blobs: dict[str, torch.Tensor], metadata: dict[str, str], where: str) -> None:
    for name, blob in blobs.items():
        dtype = INDEX_BLOBS.get(name) or DTYPES.get(name.removeprefix("data."))
        if not (name.startswith(("data.", "index.")) and blob.dtype == dtype and blob.dim() == 1):
            raise UsageError(f"{where}: payload tensor {name!r} ({blob.dtype}, "
                             f"{blob.dim()}-D) is not part of {FORMAT}")
    if payload_sha256(blobs) != metadata.get("sha256"):
        raise UsageError(f"{where}: checksum mismatch (sha256); the file is damaged or edited")


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
    metadata: dict[str, str], blobs: dict[str, torch.Tensor], layout: Layout, where: str
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Decode every tensor; also return one inspection row per tensor (see `inspect`)."""
    entries = _json(metadata, "tensors", dict, where)
    rest_meta = _json(metadata, "rest", dict, where)
    checked = {n: _entry(n, e, layout, where) for n, e in entries.items()}
    rest = [n for n in layout if n not in checked]
    rest_dtypes = iter(_rest_dtypes(rest_meta.get("dtypes"), len(rest), where))
    if rest_meta.get("layout") != rest_digest(layout, rest):
        raise UsageError(f"{where}: rest.layout: the dense tensors do not match this "
                         "architecture; allowed: a file written for the same model definition")
    payload, state, rows = _Payload(blobs), {}, []
    for name, shape in layout.items():
        # the dense rest: dtype from the runs; nonzeros are counted, not declared
        spec = checked.get(name) or (next(rest_dtypes), "dense", None)
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


def _read(path: str | Path) -> tuple[nn.Module, dict[str, torch.Tensor], list[dict[str, Any]]]:
    where = f"checkpoint {str(path)!r}"
    metadata, blobs = read_file(path)
    _check_blobs(blobs, metadata, where)
    model, layout = arch_layout(_json(metadata, "arch", dict, where), f"{where}: ")
    state, rows = decode_state(metadata, blobs, layout, where)
    return model, state, rows


def verify(path: str | Path) -> None:
    """Check a checkpoint completely: checksum, metadata, architecture and every tensor.

    Raises:
        UsageError: One line naming the file and what is wrong.
    """
    _read(path)


def load(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model written by `save`, exactly: same tensors, dtypes and outputs.

    Nothing in the file is executed: it is safetensors (never unpickled), the architecture is
    looked up by name in the model registry, and the whole file is verified (see `verify`)
    before any of it reaches the model.

    Args:
        path: A file written by `save`.
        device: Where to put the model.

    Returns:
        The model, carrying ``model.arch``.

    Raises:
        UsageError: One line, for a missing, truncated, damaged, edited or foreign file.
    """
    model, state, _ = _read(path)
    model.load_state_dict(state, assign=True)  # takes the stored tensors and their dtypes
    return model.to(device)


def inspect(path: str | Path) -> list[dict[str, Any]]:
    """One row per tensor of a checkpoint, in canonical order, after verifying it.

    Returns:
        Dicts with ``name``, ``shape``, ``dtype``, ``numel``, ``nonzeros``, ``encoding``,
        ``bytes`` (its payload in the file), ``dense_bytes`` and ``prunable``.
    """
    return _read(path)[2]
