"""The lossless codec stage of the compressed checkpoint (format: `checkpoint.fileformat`).

After the tensor encodings (`checkpoint.encoding`), each payload blob is stored as whichever is
smallest, counting the bytes its ``codecs`` metadata entry adds:

* raw: the blob as it is, in its own dtype (no ``codecs`` entry);
* ``zlib``: ``zlib.compress(raw, 9)`` (the zlib container);
* ``lzma``: a raw LZMA2 stream (``lzma.FORMAT_RAW``: no xz container, so no header to pay for)
  made with preset ``9 | PRESET_EXTREME`` and the dictionary size `dict_size` of the raw
  length; LZMA2 carries its literal and position parameters (lc, lp, pb) in the stream, so the
  writer tries a few settings and the reader needs none of them;
* ``zlib+shuffle`` / ``lzma+shuffle``: the same after a byte shuffle of a blob with
  multi-byte elements: all first bytes, then all second bytes, ... (the blosc/zfp trick: the
  sign and exponent bytes of float values repeat a lot, their mantissa bytes do not).

A blob over `LARGE` bytes (4 MiB: a large model's layer) is coded by zlib at level 6 alone,
shuffled or not (`candidates`): LZMA2 would take an order of magnitude longer there.

A coded blob is stored as a 1-D U8 tensor. `decompress` never produces more than the raw
length it is told (the reader checks it against the other metadata) and refuses a stream that
does not decompress to exactly that length, so a decompression bomb costs no more memory or
time than an honest payload of the declared length.
"""

from __future__ import annotations

import lzma
import zlib

import numpy as np

# In order of preference on equal size: zlib decodes about ten times as fast as LZMA2.
CODECS: tuple[str, ...] = ("zlib", "zlib+shuffle", "lzma", "lzma+shuffle")
_DICT_MIN, _DICT_MAX = 4096, 1 << 24


def dict_size(raw_bytes: int) -> int:
    """The LZMA2 dictionary size for a blob.

    Its whole length (so every match is in reach), within 4 KiB (liblzma's minimum) and
    16 MiB (to bound the writer's and the reader's memory).

    Args:
        raw_bytes: The blob's length before coding.

    Returns:
        The dictionary size in bytes.
    """
    return min(max(raw_bytes, _DICT_MIN), _DICT_MAX)


def shuffle(raw: bytes, itemsize: int) -> bytes:
    """Byte planes: byte 0 of every element, then byte 1, ...

    Args:
        raw: Whole elements of ``itemsize`` bytes each.
        itemsize: The element size in bytes.

    Returns:
        The shuffled bytes, as long as ``raw`` (``raw`` itself for 1-byte elements).

    Examples:
        >>> from sparsebench.checkpoint.codec import shuffle, unshuffle
        >>> shuffle(b"AaBbCc", 2)
        b'ABCabc'
        >>> unshuffle(shuffle(b"AaBbCc", 2), 2)
        b'AaBbCc'
    """
    if itemsize == 1:
        return raw
    return np.frombuffer(raw, np.uint8).reshape(-1, itemsize).T.tobytes()


def unshuffle(planes: bytes, itemsize: int) -> bytes:
    """The inverse of `shuffle`.

    Args:
        planes: The byte planes `shuffle` made.
        itemsize: The element size in bytes.

    Returns:
        The elements' bytes in their own order.
    """
    if itemsize == 1:
        return planes
    return np.frombuffer(planes, np.uint8).reshape(itemsize, -1).T.tobytes()


def _lzma_settings(itemsize: int, shuffled: bool) -> list[dict[str, int]]:
    """The (lc, lp, pb) the writer tries: plain literals for byte planes and byte streams (and
    liblzma's default for the latter), element-aligned positions for unshuffled elements."""
    if shuffled or itemsize == 1:
        plain = [{"lc": 0, "lp": 0, "pb": 0}]
        return plain if shuffled else [{"lc": 3, "lp": 0, "pb": 2}, *plain]
    align = min(itemsize.bit_length() - 1, 4)  # lp, pb <= 4 and lc + lp <= 4
    return [{"lc": max(3 - align, 0), "lp": align, "pb": align}]


def _lzma(raw: bytes, settings: dict[str, int], preset: int = 9 | lzma.PRESET_EXTREME
          ) -> bytes:
    flt = {"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": dict_size(len(raw)),
           **settings}
    return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=[flt])


#: a blob longer than this is coded by the one codec that does best on a sample of it
LARGE = 4 << 20
_SAMPLE = 1 << 20


def candidates(raw: bytes, itemsize: int) -> dict[str, bytes]:
    """Every codec's output for a blob of ``itemsize``-byte elements (shortest per codec).

    A blob over `LARGE` bytes (a large model's layer, where LZMA2 codes too slowly) gets zlib
    at level 6 alone, byte-shuffled or not as its first `_SAMPLE` bytes code shorter: a few
    percent larger than LZMA2, several times faster (`benchmarks/checkpoint_large.py`); the
    reader needs no level.

    Args:
        raw: The blob's bytes, whole elements.
        itemsize: The element size in bytes; the shuffled codecs only for ``itemsize > 1``.

    Returns:
        Codec name -> its output, in `CODECS` order (one entry for a blob over `LARGE`).

    Examples:
        A blob of zeros codes to a few bytes; `decompress` gives it back:

        >>> from sparsebench.checkpoint.codec import candidates, decompress
        >>> raw = bytes(4096)
        >>> coded = candidates(raw, 4)
        >>> list(coded)
        ['zlib', 'zlib+shuffle', 'lzma', 'lzma+shuffle']
        >>> all(len(out) < 100 for out in coded.values())
        True
        >>> all(decompress(codec, out, len(raw), 4) == raw for codec, out in coded.items())
        True
    """
    if len(raw) <= LARGE:
        return _all(raw, itemsize)
    sample = raw[: _SAMPLE - _SAMPLE % itemsize]
    shuffled = itemsize > 1 and (len(zlib.compress(shuffle(sample, itemsize), 6))
                                 < len(zlib.compress(sample, 6)))
    if shuffled:
        return {"zlib+shuffle": zlib.compress(shuffle(raw, itemsize), 6)}
    return {"zlib": zlib.compress(raw, 6)}


def _all(raw: bytes, itemsize: int) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for shuffled in (False, True) if itemsize > 1 else (False,):
        data = shuffle(raw, itemsize) if shuffled else raw
        suffix = "+shuffle" if shuffled else ""
        out["zlib" + suffix] = zlib.compress(data, 9)
        tries = [_lzma(data, s) for s in _lzma_settings(itemsize, shuffled)]
        out["lzma" + suffix] = min(tries, key=len)
    return {codec: out[codec] for codec in CODECS if codec in out}


def _inflate(codec: str, data: bytes, raw_bytes: int) -> tuple[bytes, bytes, bool, bytes]:
    """At most ``raw_bytes`` of output, one byte more if the stream holds more, the stream's end
    flag and any bytes after its end."""
    if codec == "zlib":
        z = zlib.decompressobj()
        out = z.decompress(data, raw_bytes)  # raw_bytes > 0: zlib reads 0 as "no limit"
        more = b"" if z.eof else z.decompress(z.unconsumed_tail, 1)
        return out, more, z.eof, z.unused_data
    x = lzma.LZMADecompressor(
        lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": dict_size(raw_bytes)}]
    )
    out = x.decompress(data, raw_bytes)
    more = b"" if x.eof else x.decompress(b"", 1)
    return out, more, x.eof, x.unused_data


def decompress(codec: str, data: bytes, raw_bytes: int, itemsize: int) -> bytes:
    """The raw bytes of a coded blob, which must be exactly ``raw_bytes`` long.

    Memory stays within ``raw_bytes`` (and the LZMA2 dictionary, `dict_size` of it) whatever
    ``data`` holds.

    Args:
        codec: One of `CODECS`.
        data: The coded blob (possibly from an untrusted file).
        raw_bytes: The length it must decompress to, a positive number of elements.
        itemsize: The element size in bytes (for the byte shuffle).

    Returns:
        The ``raw_bytes`` bytes of the blob.

    Raises:
        ValueError: One line, for an unknown codec, a corrupt stream, one that ends early or
            holds more than ``raw_bytes`` (a decompression bomb), or bytes after its end.

    Examples:
        A stream that holds more than the length declared is refused, however much more:

        >>> import zlib
        >>> from sparsebench.checkpoint.codec import decompress
        >>> bomb = zlib.compress(bytes(1 << 20), 9)
        >>> len(bomb) < 2000
        True
        >>> decompress("zlib", bomb, 4096, 1)
        Traceback (most recent call last):
        ...
        ValueError: zlib: decompresses to more than the 4096 bytes declared; refused (a
        decompression bomb?)
    """
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} is unknown; allowed: {', '.join(CODECS)}")
    if raw_bytes <= 0 or raw_bytes % itemsize:
        raise ValueError(f"{codec}: {raw_bytes} raw bytes is not a positive number of "
                         f"{itemsize}-byte elements")
    base = codec.removesuffix("+shuffle")
    try:
        out, more, ended, trailing = _inflate(base, data, raw_bytes)
    except (zlib.error, lzma.LZMAError) as exc:
        raise ValueError(f"{codec}: corrupt stream ({' '.join(str(exc).split())})") from None
    if more:
        raise ValueError(f"{codec}: decompresses to more than the {raw_bytes} bytes declared; "
                         "refused (a decompression bomb?)")
    if len(out) < raw_bytes:
        raise ValueError(f"{codec}: the stream ends after {len(out)} of the {raw_bytes} bytes "
                         "declared")
    if not ended:
        raise ValueError(f"{codec}: the stream is cut short (no end marker)")
    if trailing:
        raise ValueError(f"{codec}: stray bytes ({len(trailing)}) after the end of the stream")
    return unshuffle(out, itemsize) if codec.endswith("+shuffle") else out
