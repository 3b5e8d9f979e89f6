"""What ``sparsebench export`` and ``sparsebench inspect`` do (DESIGN.md, "Compressed checkpoint").

Both read either kind of model file: the dense ``sparsebench-model/1`` files of the pipeline
(`save_model`) and the compressed ``sparsebench-ckpt/1`` checkpoints (`save`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import nn

from sparsebench.checkpoint import dense, fileformat, reader, writer
from sparsebench.core.metrics import prunable_modules
from sparsebench.core.sparsity import apply_masks
from sparsebench.util.errors import UsageError

EXPORT_FORMATS = ("compressed", "dense", "prune")
PRUNE_FORMAT = "sparsebench-prune/1"
FORMATS = (fileformat.FORMAT, dense.FORMAT)


def file_format(path: str | Path) -> str:
    """The ``format`` of a model file, one of `FORMATS`.

    Args:
        path: A dense model file or a compressed checkpoint.

    Returns:
        ``sparsebench-ckpt/1`` or ``sparsebench-model/1``.

    Raises:
        UsageError: If the file cannot be read as safetensors or is of another format.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise UsageError(f"model file: {str(path)!r} is not a readable safetensors file "
                         f"({' '.join(str(exc).split())})") from None
    if fmt not in FORMATS:
        raise UsageError(f"model file: {str(path)!r} has format {fmt!r}; allowed: "
                         f"{', '.join(FORMATS)}")
    return fmt


def load_any(path: str | Path) -> nn.Module:
    """Load a dense model file or a compressed checkpoint, whichever ``path`` is.

    Args:
        path: A file of `save_model` or of `save`.

    Returns:
        The model, carrying ``model.arch``.

    Raises:
        sparsebench.util.errors.UsageError: One line, for an unreadable, damaged or foreign
            file.
    """
    if file_format(path) == fileformat.FORMAT:
        return reader.load(path)
    return dense.load_model(path)[0]


def save_pruned(model: nn.Module, path: str | Path) -> None:
    """Write the ``torch.nn.utils.prune`` form: ``weight_orig`` and ``weight_mask`` per layer.

    The mask of each prunable weight is its nonzero pattern. To use the file, apply
    ``prune.custom_from_mask(module, "weight", state[f"{name}.weight_mask"])`` to each layer of
    a fresh ``build_model(arch["name"], **arch["args"])``, then ``load_state_dict(state)``.
    Changes ``model``.

    Args:
        model: A model from `build_model` (it carries ``model.arch``); its masks are set to
            its nonzero patterns.
        path: The output file; it appears complete or not at all.

    Raises:
        sparsebench.util.errors.UsageError: If the file cannot be written.
    """
    apply_masks(model, {name: m.weight != 0 for name, m in prunable_modules(model)})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": PRUNE_FORMAT, "arch": json.dumps(model.arch, separators=(",", ":"))}
    writer.write_atomic(state, path, meta)


def export(model_file: str | Path, out: str | Path, to: str) -> None:
    """Convert a model file to the compressed, dense or pruned form; ``out`` is atomic.

    Args:
        model_file: A dense model file (`save_model`) or a compressed checkpoint (`save`).
        out: The output file.
        to: ``compressed`` (`save`), ``dense`` (`save_model`: a plain state_dict) or ``prune``
            (`save_pruned`).

    Raises:
        UsageError: For an unknown ``to``, an unreadable input or an unwritable output.
    """
    if to not in EXPORT_FORMATS:
        raise UsageError(f"--to: unknown value {to!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    model = load_any(model_file)
    if to == "compressed":
        writer.save(model, out)
    elif to == "dense":
        try:
            dense.save_model(model, out)
        except OSError as exc:
            raise UsageError(f"output: {str(out)!r} cannot be written ({exc.strerror})") from None
    else:
        save_pruned(model, out)


def inspect(path: str | Path) -> list[dict[str, Any]]:
    """One row per tensor (see `reader.inspect`); a dense model file shows all dense.

    Args:
        path: A dense model file or a compressed checkpoint.

    Returns:
        The rows of `reader.inspect`.

    Raises:
        sparsebench.util.errors.UsageError: One line, for an unreadable, damaged or foreign
            file.
    """
    return _inspect_all(path)[0]


def _inspect_all(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`inspect`'s rows and the payload rows of `reader.inspect_all` (none for a dense file)."""
    if file_format(path) == fileformat.FORMAT:
        return reader.inspect_all(path)
    model, _ = dense.load_model(path)
    prunable = {f"{n}.weight" for n, _ in prunable_modules(model)}
    names = fileformat.DTYPE_NAMES
    return [
        {"name": k, "shape": list(t.shape), "dtype": names.get(t.dtype, str(t.dtype)),
         "numel": t.numel(), "nonzeros": int(t.count_nonzero()), "encoding": "dense",
         "bytes": t.numel() * t.element_size(), "dense_bytes": t.numel() * t.element_size(),
         "prunable": k in prunable}
        for k, t in model.state_dict().items()
    ], []  # fmt: skip


def _fmt_row(name: str, shape: str, nonzeros: str, density: str, enc: str, size: str) -> str:
    return f"{name:<28} {shape:<16} {nonzeros:>10} {density:>8} {enc:<12} {size:>10}"


def inspect_table(path: str | Path) -> str:
    """The ``sparsebench inspect`` report of a model file.

    Prunable layers, the dense rest, what the codec stage saves per coded payload (negative
    bytes), header, totals. The tensors' bytes are their encoded payloads before the codec
    stage; all the bytes column adds up to the file size.

    Args:
        path: A dense model file or a compressed checkpoint.

    Returns:
        The report, lines of aligned columns.

    Raises:
        sparsebench.util.errors.UsageError: One line, for an unreadable, damaged or foreign
            file.
    """
    rows, payloads = _inspect_all(path)
    lines = [_fmt_row("name", "shape", "nonzeros", "density", "encoding", "bytes")]
    for r in (r for r in rows if r["prunable"]):
        density = f"{r['nonzeros'] / r['numel']:.4f}" if r["numel"] else "-"
        shape = "x".join(map(str, r["shape"]))
        lines.append(_fmt_row(r["name"], shape, str(r["nonzeros"]), density, r["encoding"],
                              str(r["bytes"])))
    rest = [r for r in rows if not r["prunable"]]
    rest_bytes = sum(r["bytes"] for r in rest)
    lines.append(_fmt_row(f"({len(rest)} other tensors)", "", str(sum(r["nonzeros"] for r in rest)),
                          "", "dense", str(rest_bytes)))
    for p in (p for p in payloads if p["codec"] != "raw"):
        lines.append(_fmt_row(f"(codec {p['name']})", "", "", "", p["codec"],
                              str(p["stored_bytes"] - p["raw_bytes"])))
    file_bytes = Path(path).stat().st_size
    payload = sum(r["bytes"] for r in rows) + sum(p["stored_bytes"] - p["raw_bytes"]
                                                  for p in payloads)
    lines.append(_fmt_row("(header)", "", "", "", "", str(file_bytes - payload)))
    numel, nonzeros = sum(r["numel"] for r in rows), sum(r["nonzeros"] for r in rows)
    density = f"{nonzeros / numel:.4f}" if numel else "-"
    lines.append(_fmt_row("total", "", str(nonzeros), density, "", str(file_bytes)))
    dense_bytes = sum(r["dense_bytes"] for r in rows)
    ratio = file_bytes / max(dense_bytes, 1)
    lines.append(f"file {file_bytes} bytes, dense size {dense_bytes} bytes: "
                 f"ratio {ratio:.4f} (compression {1 / ratio:.1f}x)")
    return "\n".join(lines)
