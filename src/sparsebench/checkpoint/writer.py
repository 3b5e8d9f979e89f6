"""Writing the compressed checkpoint: `save` (format: `checkpoint.fileformat`, DESIGN.md
"Compressed checkpoint"), and the information bound of its encodings, which the file size is
measured against."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench.checkpoint import codec
from sparsebench.checkpoint.encoding import SPARSE_DTYPES, encode, encoded_sizes, nonzero_indices
from sparsebench.checkpoint.fileformat import (
    DTYPE_NAMES,
    FORMAT,
    Layout,
    arch_layout,
    compact_json,
    index_blob,
    payload_sha256,
    rest_digest,
)
from sparsebench.core.metrics import prunable_modules
from sparsebench.core.sparsity import make_permanent
from sparsebench.util.canonical import safetensors_bytes
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import atomic_write


def _plain_model(model: nn.Module) -> nn.Module:
    """The model with its ``torch.nn.utils.prune`` masks folded in (on a copy)."""
    if any(k.endswith(("_orig", "_mask")) for k in model.state_dict()):
        model = copy.deepcopy(model)
        make_permanent(model)
        left = [k for k in model.state_dict() if k.endswith(("_orig", "_mask"))]
        if left:
            raise UsageError(f"model: masked tensor {left[0]!r} is not on a prunable layer; "
                             "allowed: masks on Linear/Conv weights only")
    return model


def _model_state(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor], Layout]:
    """The model's arch, its CPU state_dict, and the canonical layout it must match."""
    arch = getattr(model, "arch", None)
    if not isinstance(arch, dict):
        raise UsageError("model: it has no .arch; allowed: a model built by build_model")
    _, layout = arch_layout(arch, "model.", trust_code=True)  # the model in hand: built already
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name in [*layout, *sorted(state.keys() - layout.keys())]:
        shape = tuple(state[name].shape) if name in state else None
        if shape != layout.get(name):
            raise UsageError(f"model: tensor {name!r} has shape {shape}; allowed: "
                             f"{layout.get(name)}, as build_model({arch['name']!r}) makes it")
        if state[name].dtype not in DTYPE_NAMES:
            raise UsageError(f"model: tensor {name!r} has dtype {state[name].dtype}; allowed: "
                             f"{', '.join(map(str, DTYPE_NAMES))}")
    return arch, state, layout


def _prunable_names(model: nn.Module) -> set[str]:
    return {f"{name}.weight" if name else "weight" for name, _ in prunable_modules(model)}


def _runs(items: list[str]) -> list[list[Any]]:
    runs: list[list[Any]] = []
    for item in items:
        if runs and runs[-1][0] == item:
            runs[-1][1] += 1
        else:
            runs.append([item, 1])
    return runs


def _codec_entry(name: str, entry: list[Any]) -> str:
    """The text an entry adds to the ``codecs`` value: ``"name":[codec,raw_bytes]`` and a comma."""
    return compact_json({name: entry})[1:-1] + ","


def store_blobs(
    blobs: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, list[Any]]]:
    """The codec stage: each payload raw, or as its smallest codec output where smaller.

    A codec output (`checkpoint.codec`) is chosen where it is smaller than the raw payload,
    counting the bytes of its ``codecs`` entry; on equal size raw wins, then the earlier codec.

    Args:
        blobs: The payload tensors, raw.

    Returns:
        The payload tensors as stored (a coded one as 1-D U8), and the ``codecs`` entries
        (payload name -> [codec, raw bytes]) of the coded ones.
    """
    stored, codecs = {}, {}
    for name, blob in blobs.items():
        raw = blob.contiguous().view(torch.uint8).numpy().tobytes()
        best: tuple[int, str | None, bytes] = (len(raw), None, raw)
        for method, data in codec.candidates(raw, blob.element_size()).items():
            cost = len(data) + len(_codec_entry(name, [method, len(raw)]))
            if cost < best[0]:  # ties keep the earlier: raw, then zlib (faster to read)
                best = (cost, method, data)
        _, chosen, data = best
        if chosen is None:
            stored[name] = blob
        else:
            stored[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            codecs[name] = [chosen, len(raw)]
    return stored, codecs


def encode_state(
    state: dict[str, torch.Tensor], layout: Layout, prunable: set[str], compress: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Encode a state_dict into payload tensors and the metadata other than format and arch.

    Args:
        state: The model's state_dict, on the CPU, masks folded in.
        layout: The architecture's state_dict names -> shapes, in canonical order.
        prunable: The names of the prunable weights (the others are stored dense).
        compress: False leaves out the codec stage (every payload raw).

    Returns:
        The payload tensors as stored, and the ``tensors``, ``rest``, ``codecs`` and
        ``sha256`` metadata.
    """
    parts: dict[str, list[torch.Tensor]] = {}
    tensors: dict[str, list[Any]] = {}
    rest: list[str] = []
    for name in layout:  # canonical order
        t = state[name].contiguous()
        dtype = DTYPE_NAMES[t.dtype]
        if name in prunable and t.dtype in SPARSE_DTYPES:
            enc = encode(t)
            sparsity = round(1 - enc.nonzeros / t.numel(), 4) if t.numel() else 0.0
            tensors[name] = [list(t.shape), dtype, enc.encoding, enc.nonzeros, sparsity]
            parts.setdefault(f"data.{dtype}", []).append(enc.values)
            if enc.index.size:
                parts.setdefault(index_blob(enc.encoding), []).append(torch.from_numpy(enc.index))
        else:
            rest.append(name)
            parts.setdefault(f"data.{dtype}", []).append(t.reshape(-1))
    blobs = {k: torch.cat(v) for k, v in parts.items() if sum(p.numel() for p in v)}
    blobs, codecs = store_blobs(blobs) if compress else (blobs, {})
    dtypes = [DTYPE_NAMES[state[n].dtype] for n in rest]
    metadata = {
        "tensors": compact_json(tensors),
        "rest": compact_json({"dtypes": _runs(dtypes), "layout": rest_digest(layout, rest)}),
        "codecs": compact_json(codecs),
        "sha256": payload_sha256(blobs),
    }
    return blobs, metadata


def write_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict) -> None:
    """Write a safetensors file under a temporary name, then rename: complete or absent.

    Args:
        tensors: The tensors to store.
        path: The output file.
        metadata: The string metadata.

    Raises:
        sparsebench.util.errors.UsageError: If the file cannot be written.
    """
    path = Path(path)
    try:
        atomic_write(path, safetensors_bytes(tensors, metadata))
    except OSError as exc:
        raise UsageError(f"output: {str(path)!r} cannot be written ({exc.strerror})") from None


def save(model: nn.Module, path: str | Path, *, compress: bool = True) -> None:
    """Write ``model`` as a compressed sparse checkpoint (DESIGN.md, "Compressed checkpoint").

    Every prunable weight (of ``nn.Linear`` / ``nn.Conv*``) takes the smallest of the encodings
    dense, bitmask and delta index; the other tensors are stored dense. Then each payload is
    stored raw or, where smaller, through a lossless codec (`checkpoint.codec`). Masks of
    ``torch.nn.utils.prune`` are folded in on a copy; the model itself is not changed.

    Args:
        model: A model from `build_model` (it carries ``model.arch``), on any device.
        path: The output file; it appears complete or not at all.
        compress: False leaves out the codec stage: every payload raw (for comparisons; the
            file is as valid either way).

    Raises:
        UsageError: If the model has no ``arch``, does not match it, or has an unsupported
            dtype; or if the file cannot be written.

    Examples:
        A model pruned to 90% sparsity: its file is far smaller than the dense one, and the
        model in hand keeps its masks:

        >>> import pathlib, tempfile
        >>> import torch
        >>> from sparsebench.checkpoint import load, save, save_model
        >>> from sparsebench.core.models import build_model
        >>> from sparsebench.core.sparsity import apply_masks, magnitude_masks
        >>> _ = torch.manual_seed(0)
        >>> model = build_model("mlp", widths=(32,), in_channels=1, image_size=4, num_classes=3)
        >>> apply_masks(model, magnitude_masks(model, 0.9))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     sparse, dense = pathlib.Path(tmp) / "sparse", pathlib.Path(tmp) / "dense"
        ...     save(model, sparse)
        ...     plain = load(sparse)  # the masks folded in
        ...     save_model(plain, dense)
        ...     ratio = dense.stat().st_size / sparse.stat().st_size
        >>> ratio > 2, hasattr(model.layers[1], "weight_mask")
        (True, True)
    """
    model = _plain_model(model)
    arch, state, layout = _model_state(model)
    blobs, metadata = encode_state(state, layout, _prunable_names(model), compress)
    write_atomic(blobs, path, {"format": FORMAT, "arch": compact_json(arch), **metadata})


def information_bound(model: nn.Module) -> int:
    """The size the encodings can reach at best, header aside (DESIGN.md).

    For each prunable weight the least of dense, ``element_size * nonzeros + numel / 8``
    (bitmask) and ``element_size * nonzeros +`` its delta-index bytes; the other tensors dense.
    This is the bound of the encodings alone, which treat the values as incompressible: the
    codec stage (`checkpoint.codec`) can take a file below it, and does whenever the values'
    sign and exponent bytes, the index gaps or constant tensors repeat.

    Args:
        model: A model, masked or not (its masks are folded in on a copy).

    Returns:
        The bound in bytes, rounded up.
    """
    model = _plain_model(model)
    prunable = _prunable_names(model)
    total = 0.0
    for name, t in model.state_dict().items():
        if name not in prunable or t.dtype not in SPARSE_DTYPES:
            total += t.numel() * t.element_size()
            continue
        indices = nonzero_indices(t)
        sizes: dict[str, float] = dict(encoded_sizes(t, indices))
        # the bound counts the mask's bits, not whole bytes
        sizes["bitmask"] = t.element_size() * indices.size + t.numel() / 8
        total += min(sizes.values())
    return math.ceil(total)
