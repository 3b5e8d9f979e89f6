"""The compressed checkpoint file ``sparsebench-ckpt/1`` (DESIGN.md, "Compressed checkpoint").

A safetensors file (no pickle: safe to load from strangers) whose few payload tensors are
concatenations, so the safetensors header stays small however many tensors the model has:

* ``data.<DT>`` (``DT`` a safetensors dtype: F64, F32, F16, BF16, I64, ...): for every tensor of
  that dtype in the canonical order, its nonzero values (sparse encodings) or all its elements.
* ``index.bitmask`` (U8), ``index.delta-u8`` (U8), ``index.delta-u16`` (U16),
  ``index.delta-u32`` (U32): the index parts of the tensors in that encoding, in the same order.

The canonical order is the ``state_dict`` order of ``build_model(arch)``. Empty payloads are
left out. The encodings are those of `sparsebench.checkpoint.encoding`. Each payload is then
stored raw as above, or, where that is smaller, coded by a lossless codec of
`sparsebench.checkpoint.codec` (zlib or LZMA2, optionally after a byte shuffle) as a 1-D U8
tensor of the same name, recorded in ``codecs``. String metadata, each value JSON except
``format``:

* ``format``: ``sparsebench-ckpt/1``.
* ``arch``: ``{"name": ..., "args": {...}}`` and, when layers are kept dense, ``"exclude":
  [...]`` (`sparsebench.core.models.from_arch`), from which `load` rebuilds the model.
* ``tensors``: for each encoded (prunable) tensor,
  ``name: [shape, dtype, encoding, nonzeros, sparsity]`` (sparsity rounded to 4 places).
* ``rest``: the other tensors (biases, batch norm, buffers), stored dense as they are:
  ``{"dtypes": [[dtype, count], ...], "layout": digest}``; their names and shapes are the
  architecture's, ``dtypes`` gives their dtypes in canonical order as runs, and ``layout`` is the
  first 16 hex digits of the SHA-256 of ``"name:d0,d1,...\\n"`` over them, so a changed model
  definition is refused rather than filled wrongly, without naming each of them in the
  metadata.
* ``codecs``: ``{payload: [codec, raw_bytes], ...}`` for the coded payloads only (raw ones
  are not named). ``raw_bytes`` is the length of the payload before coding; the reader checks
  it against the length the other metadata implies (exactly for data and bitmask payloads;
  within the bounds of the escapes for delta streams) and refuses a stream that does not
  decompress to exactly that length, never producing more. A missing ``codecs`` means none.
* ``sha256``: hex SHA-256 over the payload tensors in sorted name order, each contributing its
  UTF-8 name, a zero byte, its byte length as 8 bytes little-endian, and its bytes as stored
  (little-endian; for a coded payload, the codec's output). `load` checks it before decoding
  or decompressing anything.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from sparsebench.core.external import is_code, is_torchvision
from sparsebench.core.models import MODELS, from_arch, unknown_model
from sparsebench.util.errors import UsageError

FORMAT = "sparsebench-ckpt/1"

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
INDEX_BLOBS: dict[str, torch.dtype] = {
    "index.bitmask": torch.uint8,
    "index.delta-u8": torch.uint8,
    "index.delta-u16": torch.uint16,
    "index.delta-u32": torch.uint32,
}
Layout = dict[str, tuple[int, ...]]


def blob_dtype(name: str) -> torch.dtype | None:
    """The dtype of a raw payload tensor of this name.

    Args:
        name: A payload tensor's name, ``data.<DT>`` or ``index.<encoding>``.

    Returns:
        Its dtype before any codec, or None if no payload has this name.

    Examples:
        >>> from sparsebench.checkpoint.fileformat import blob_dtype
        >>> blob_dtype("data.BF16"), blob_dtype("index.delta-u16"), blob_dtype("data.X")
        (torch.bfloat16, torch.uint16, None)
    """
    if name.startswith("index."):
        return INDEX_BLOBS.get(name)
    return DTYPES.get(name.removeprefix("data.")) if name.startswith("data.") else None


def compact_json(value: Any) -> str:
    """JSON without spaces, as the metadata stores it.

    Args:
        value: JSON-able data.

    Returns:
        The JSON text, separators ``,`` and ``:``.
    """
    return json.dumps(value, separators=(",", ":"))


def index_blob(encoding: str) -> str:
    """The name of the payload tensor holding the index parts of an encoding.

    Args:
        encoding: A sparse encoding of `sparsebench.checkpoint.encoding.ENCODINGS`.

    Returns:
        ``index.<encoding>``.
    """
    return f"index.{encoding}"


def rest_digest(layout: Layout, names: list[str]) -> str:
    """The ``rest.layout`` digest: names and shapes of the dense rest, in order.

    Args:
        layout: The architecture's state_dict names -> shapes.
        names: The names of the tensors stored dense as the rest, in canonical order.

    Returns:
        The first 16 hex digits of the SHA-256 of ``"name:d0,d1,...\\n"`` over ``names``.
    """
    text = "".join(f"{n}:{','.join(map(str, layout[n]))}\n" for n in names)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def payload_sha256(blobs: dict[str, torch.Tensor]) -> str:
    """The ``sha256`` metadata value: see the module docstring for the byte order.

    Args:
        blobs: The payload tensors as stored (a coded payload as its codec's output).

    Returns:
        The hex SHA-256.
    """
    digest = hashlib.sha256()
    for name in sorted(blobs):
        raw = blobs[name].contiguous().view(torch.uint8).numpy()
        digest.update(name.encode() + b"\0" + raw.nbytes.to_bytes(8, "little"))
        digest.update(memoryview(raw))
    return digest.hexdigest()


def arch_layout(arch: dict[str, Any], where: str, *,
                trust_code: bool = False) -> tuple[nn.Module, Layout]:
    """Build ``arch``: the model and its layout (state_dict names and shapes, in order).

    The model is built on the CPU, not on the meta device (which would import
    ``torch._dynamo`` for ``kaiming_normal_``). A user's builder (``<module>:<callable>``) is
    code: it is run with ``trust_code`` only.

    Args:
        arch: ``{"name": ..., "args": {...}}`` and optionally ``"exclude": [...]``, as
            ``model.arch`` (`sparsebench.core.models.build_model`).
        where: The prefix of every error message (which file or object).
        trust_code: Run a user's builder.

    Returns:
        The model and its layout: state_dict name -> shape, in state_dict order.

    Raises:
        UsageError: For an unknown name or bad arguments; the message starts with ``where``.
    """
    name, args = arch.get("name"), arch.get("args")
    known = isinstance(name, str) and (name in MODELS or is_torchvision(name) or is_code(name))
    if not known:
        raise unknown_model(f"{where}arch.name", name)
    if not isinstance(args, dict):
        raise UsageError(f"{where}arch.args: {args!r} is not a mapping; allowed: an object")
    if not isinstance(arch.get("exclude", []), list):
        raise UsageError(f"{where}arch.exclude: {arch['exclude']!r} is not a list; allowed: "
                         "layer names")
    try:
        model = from_arch(arch, trust_code=trust_code)
    except UsageError as exc:
        raise UsageError(f"{where}{exc}") from None
    except (RuntimeError, MemoryError) as exc:  # arguments too large to allocate
        name = type(exc).__name__
        raise UsageError(f"{where}arch.args: {args!r} cannot be built ({name})") from None
    return model, {k: tuple(v.shape) for k, v in model.state_dict().items()}
