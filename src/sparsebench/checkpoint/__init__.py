"""Model files and the compressed sparse checkpoint (DESIGN.md, "Compressed checkpoint").

* `save` / `load` / `verify` / `inspect`: the compressed checkpoint ``sparsebench-ckpt/1``, a
  safetensors file in which each prunable weight takes the smallest of a packed bitmask, a
  delta index and dense, and each payload blob is then stored raw or through zlib / LZMA2
  (optionally byte-shuffled), whichever is smallest; `load` rebuilds the model by itself,
  exactly, and refuses damaged, edited or foreign files (decompression bombs included) with a
  one-line `UsageError`. Format: `checkpoint.fileformat`; tensor encodings:
  `checkpoint.encoding`; the codec stage: `checkpoint.codec`.
* `save_model` / `load_model`: the dense model files the pipeline's stages pass along.
* `export` / `inspect_table`: what ``sparsebench export`` and ``sparsebench inspect`` do.
"""

from sparsebench.checkpoint.dense import load_model, save_model
from sparsebench.checkpoint.encoding import ENCODINGS, decode, encode, encoded_sizes
from sparsebench.checkpoint.fileformat import FORMAT
from sparsebench.checkpoint.reader import inspect, load, verify
from sparsebench.checkpoint.tools import EXPORT_FORMATS, export, inspect_table, save_pruned
from sparsebench.checkpoint.writer import information_bound, save

__all__ = [
    "ENCODINGS",
    "EXPORT_FORMATS",
    "FORMAT",
    "decode",
    "encode",
    "encoded_sizes",
    "export",
    "information_bound",
    "inspect",
    "inspect_table",
    "load",
    "load_model",
    "save",
    "save_model",
    "save_pruned",
    "verify",
]
