"""File helpers shared by the data modules: bounded reads, one-line messages (atomic writes:
`sparsebench.util.paths.atomic_write`)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

#: Upper bound on one decompressed raw file (largest real one: 47 MB), against gzip bombs.
MAX_RAW_BYTES = 1 << 30
_CHUNK = 1 << 20


class BadFile(Exception):
    """A raw file that cannot be read or fails its check; the one-line message names it."""


def one_line(text: object, limit: int = 240) -> str:
    """Collapse whitespace (tracebacks, multi-line tool output) into one bounded line."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_bytes(path: Path) -> bytes:
    """The decompressed bytes of a plain or gzipped file (told apart by content).

    Raises:
        BadFile: When the file cannot be read, is a broken gzip or decompresses to more than
            `MAX_RAW_BYTES`.
    """
    chunks, total = [], 0
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > MAX_RAW_BYTES:
                    raise BadFile(f"{path} is larger than {MAX_RAW_BYTES} bytes once decompressed")
                chunks.append(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise BadFile(f"cannot read {path} ({one_line(exc, 120)})") from exc
    return b"".join(chunks)
