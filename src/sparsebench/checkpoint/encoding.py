"""Tensor encodings of the compressed checkpoint (DESIGN.md, "Compressed checkpoint").

Each prunable tensor is stored in whichever of these encodings is smallest:

* ``dense``: every element as it is, ``numel * element_size`` bytes.
* ``bitmask``: ``numpy.packbits`` (big bit order, the first element in the high bit) of the flat
  (C-order) nonzero pattern, ``ceil(numel / 8)`` bytes with zero padding bits, followed by the
  nonzero values in flat order.
* ``delta-u8`` / ``delta-u16`` / ``delta-u32``: the flat indices ``i_0 < i_1 < ...`` of the
  nonzeros as gaps ``g_k = i_k - i_{k-1} - 1`` (with ``i_{-1} = -1``, so ``g_k >= 0``) in one
  unsigned integer type with maximum ``M = 2**bits - 1``, and the nonzero values. A gap too
  large for the type is written with escapes: an entry equal to ``M`` advances ``M`` positions
  and places nothing, an entry ``e < M`` advances ``e`` positions and places the next nonzero,
  so ``g_k = M * escapes_k + e_k``. The width with the fewest bytes wins (not merely the first
  that holds the largest gap: one rare long gap costs a few escapes, not a wider type).

"Zero" is zero by value: a ``-0.0`` (masking by multiplication leaves one at every pruned
negative weight) is a zero and decodes as ``+0.0``, so ``torch.equal`` holds and every forward
pass gives the same numbers; every nonzero, NaN and infinities included, is kept bit for bit.
The sparse encodings apply to float64, float32, float16 and bfloat16; they go through integer
views of the raw bits because numpy has no bfloat16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Float dtype -> the integer dtype of the same width, to move raw bits (numpy lacks bfloat16).
SPARSE_DTYPES: dict[torch.dtype, torch.dtype] = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
DELTA_TYPES: dict[str, type[np.unsignedinteger]] = {
    "delta-u8": np.uint8,
    "delta-u16": np.uint16,
    "delta-u32": np.uint32,
}
ENCODINGS: tuple[str, ...] = ("dense", "bitmask", *DELTA_TYPES)  # ties go to the earlier one

_NO_INDEX = np.zeros(0, dtype=np.uint8)


@dataclass(frozen=True)
class Encoded:
    """One encoded tensor (see the module docstring for the encodings).

    Attributes:
        encoding: One of `ENCODINGS`.
        nonzeros: Number of nonzero elements of the tensor.
        values: 1-D, the tensor's dtype: every element (``dense``) or the nonzeros in flat order.
        index: The packed bitmask (uint8) or the delta stream; empty for ``dense``.
    """

    encoding: str
    nonzeros: int
    values: torch.Tensor
    index: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes of the payload: values and index."""
        return self.values.numel() * self.values.element_size() + self.index.nbytes


def nonzero_indices(tensor: torch.Tensor) -> np.ndarray:
    """Flat (C-order) indices of the elements that are not zero by value.

    Args:
        tensor: Any tensor (NaN counts as nonzero, ``-0.0`` as zero).

    Returns:
        The indices, a 1-D int64 array.
    """
    flat = tensor.detach().cpu().reshape(-1)
    return torch.nonzero(flat).squeeze(1).numpy()  # NaN != 0, so NaN counts as nonzero


def _gaps(indices: np.ndarray) -> np.ndarray:
    return np.diff(indices, prepend=-1) - 1


def _delta_entries(gaps: np.ndarray, np_type: type[np.unsignedinteger]) -> int:
    """Entries of a delta stream: one per nonzero plus its escapes."""
    return gaps.size + int((gaps // np.iinfo(np_type).max).sum())


def encoded_sizes(tensor: torch.Tensor, indices: np.ndarray | None = None) -> dict[str, int]:
    """Payload bytes of ``tensor`` in each encoding that applies to its dtype.

    Args:
        tensor: Any tensor.
        indices: Its `nonzero_indices`, if already computed.

    Returns:
        Encoding name -> bytes, in `ENCODINGS` order; only ``dense`` for non-float dtypes.

    Examples:
        >>> import torch
        >>> from sparsebench.checkpoint import encoded_sizes
        >>> w = torch.zeros(1000)
        >>> w[::100] = 1.0
        >>> encoded_sizes(w)
        {'dense': 4000, 'bitmask': 165, 'delta-u8': 50, 'delta-u16': 60, 'delta-u32': 80}
    """
    numel, itemsize = tensor.numel(), tensor.element_size()
    sizes = {"dense": numel * itemsize}
    if tensor.dtype not in SPARSE_DTYPES:
        return sizes
    indices = nonzero_indices(tensor) if indices is None else indices
    values = indices.size * itemsize
    sizes["bitmask"] = math.ceil(numel / 8) + values
    gaps = _gaps(indices)
    for name, np_type in DELTA_TYPES.items():
        sizes[name] = _delta_entries(gaps, np_type) * np.dtype(np_type).itemsize + values
    return sizes


def _delta_stream(indices: np.ndarray, np_type: type[np.unsignedinteger]) -> np.ndarray:
    top = np.iinfo(np_type).max
    gaps = _gaps(indices)
    ends = np.cumsum(gaps // top + 1) - 1  # where each nonzero's final entry lands
    stream = np.full(int(ends[-1]) + 1 if gaps.size else 0, top, dtype=np_type)
    stream[ends] = gaps % top
    return stream


def encode(tensor: torch.Tensor, encoding: str | None = None) -> Encoded:
    """Encode a tensor, in the smallest encoding unless one is given.

    Args:
        tensor: Any tensor; the sparse encodings need a float dtype of `SPARSE_DTYPES`.
        encoding: Force one of `ENCODINGS` (tests use this to compare the sizes).

    Returns:
        The encoded tensor.

    Raises:
        ValueError: For an unknown encoding, or a sparse one for a non-float dtype.

    Examples:
        The smallest encoding of a sparse tensor, and `decode` gives it back exactly:

        >>> import torch
        >>> from sparsebench.checkpoint import decode, encode
        >>> w = torch.zeros(10, 10)
        >>> w[0, 3], w[7, 0] = 1.5, -2.0
        >>> enc = encode(w)
        >>> enc.encoding, enc.nonzeros, enc.values, enc.index, enc.nbytes
        ('delta-u8', 2, tensor([ 1.5000, -2.0000]), array([ 3, 66], dtype=uint8), 10)
        >>> torch.equal(decode(enc, (10, 10), torch.float32), w)
        True
    """
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.dtype not in SPARSE_DTYPES:
        if encoding not in (None, "dense"):
            raise ValueError(f"encoding: {encoding!r} needs a float dtype, not {flat.dtype}")
        return Encoded("dense", int(torch.count_nonzero(flat)), flat.clone(), _NO_INDEX)
    indices = nonzero_indices(flat)
    sizes = encoded_sizes(flat, indices)
    if encoding is None:
        encoding = min(sizes, key=sizes.__getitem__)  # first of equal minima: simplest wins
    if encoding not in sizes:
        raise ValueError(f"encoding: unknown name {encoding!r}; allowed: {', '.join(sizes)}")
    if encoding == "dense":
        return Encoded("dense", indices.size, flat.clone(), _NO_INDEX)
    bits = flat.view(SPARSE_DTYPES[flat.dtype])  # gather raw bits: NaN payloads survive
    values = bits[torch.from_numpy(indices)].view(flat.dtype)
    if encoding == "bitmask":
        pattern = np.zeros(flat.numel(), dtype=bool)
        pattern[indices] = True
        index = np.packbits(pattern)
    else:
        index = _delta_stream(indices, DELTA_TYPES[encoding])
    return Encoded(encoding, indices.size, values, index)


def _bitmask_indices(index: np.ndarray, numel: int) -> np.ndarray:
    if index.dtype != np.uint8 or index.size != math.ceil(numel / 8):
        raise ValueError(f"bitmask: {index.size} bytes for {numel} elements")
    indices = np.flatnonzero(np.unpackbits(index))
    if indices.size and indices[-1] >= numel:
        raise ValueError("bitmask: a padding bit is set")
    return indices


def _delta_indices(index: np.ndarray, encoding: str, numel: int) -> np.ndarray:
    np_type = DELTA_TYPES[encoding]
    if index.dtype != np_type:
        raise ValueError(f"{encoding}: stream of type {index.dtype}")
    top = np.iinfo(np_type).max
    if index.size and index[-1] == top:
        raise ValueError(f"{encoding}: the stream ends in an escape")
    finals = np.flatnonzero(index != top)
    # i_k = (g_0 + ... + g_k) + k, and the stream's running sum at the k-th final is g_0..g_k
    indices = np.cumsum(index, dtype=np.int64)[finals] + np.arange(finals.size)
    if indices.size and indices[-1] >= numel:
        raise ValueError(f"{encoding}: index {int(indices[-1])} beyond {numel} elements")
    return indices


def decode(encoded: Encoded, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Rebuild the tensor from `encode`'s output, checking every part against the rest.

    Args:
        encoded: The encoded tensor (possibly read from an untrusted file).
        shape: The tensor's shape.
        dtype: The tensor's dtype.

    Returns:
        A new tensor of ``shape`` and ``dtype``.

    Raises:
        ValueError: If the parts do not fit together (counts, lengths, dtypes, indices).
    """
    numel = math.prod(shape)
    values, nonzeros = encoded.values, encoded.nonzeros
    if values.dtype != dtype or values.dim() != 1:
        raise ValueError(f"values: {values.dtype} {list(values.shape)}, expected 1-D {dtype}")
    if encoded.encoding == "dense":
        if values.numel() != numel:
            raise ValueError(f"dense: {values.numel()} values for {numel} elements")
        return values.clone().view(shape)
    if dtype not in SPARSE_DTYPES or encoded.encoding not in ENCODINGS:
        raise ValueError(f"encoding: {encoded.encoding!r} cannot hold a {dtype} tensor")
    if encoded.encoding == "bitmask":
        indices = _bitmask_indices(encoded.index, numel)
    else:
        indices = _delta_indices(encoded.index, encoded.encoding, numel)
    if not indices.size == values.numel() == nonzeros:
        raise ValueError(
            f"{encoded.encoding}: {indices.size} positions, {values.numel()} values, "
            f"{nonzeros} nonzeros declared"
        )
    if nonzeros and not bool(torch.all(values != 0)):
        raise ValueError(f"{encoded.encoding}: a stored value is zero")
    int_dtype = SPARSE_DTYPES[dtype]
    out = torch.zeros(numel, dtype=int_dtype)  # all-zero bits: +0.0 in every float format
    out[torch.from_numpy(indices)] = values.view(int_dtype)
    return out.view(dtype).view(shape)
