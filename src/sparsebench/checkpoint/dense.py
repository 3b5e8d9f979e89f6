"""Dense model files: safetensors, no pickle anywhere.

A model file holds the plain ``state_dict`` (masks folded in) and, in its metadata, the
architecture name and arguments, so `load_model` rebuilds the model by itself. The pipeline's
stages keep their models in this form; the compressed sparse form of DESIGN.md ("Compressed
checkpoint") is `sparsebench.checkpoint.save` / `sparsebench.checkpoint.load`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from sparsebench.core.models import from_arch
from sparsebench.util.canonical import safetensors_bytes
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import atomic_write

FORMAT = "sparsebench-model/1"


def save_model(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Write the model's weights and architecture; the file appears complete or not at all.

    The model must carry no masks (see `sparsebench.core.sparsity.make_permanent`).

    Args:
        model: A model from `build_model` (it carries ``model.arch``), on any device.
        path: The output file.
        meta: JSON-able data stored beside the weights (`load_model` returns it).

    Raises:
        ValueError: If the model still carries ``torch.nn.utils.prune`` masks.
        OSError: If the file cannot be written.

    Examples:
        A round trip gives the same tensors and the ``meta``:

        >>> import pathlib, tempfile
        >>> import torch
        >>> from sparsebench.checkpoint import load_model, save_model
        >>> from sparsebench.core.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model("mlp", widths=(32,), in_channels=1, image_size=4, num_classes=3)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "model.safetensors"
        ...     save_model(model, path, {"epochs": 2})
        ...     loaded, meta = load_model(path)
        >>> meta, loaded.arch["name"]
        ({'epochs': 2}, 'mlp')
        >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
        ...                                       loaded.state_dict().values()))
        True
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if any(k.endswith("_mask") or k.endswith("_orig") for k in state):
        raise ValueError("save_model: fold the masks in first (sparsity.make_permanent)")
    metadata = {"format": FORMAT, "arch": json.dumps(model.arch), "meta": json.dumps(meta or {})}
    atomic_write(Path(path), safetensors_bytes(state, metadata))


def load_model(path: str | Path, device: torch.device | str = "cpu", *,
               trust_code: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild the model written by `save_model`; return it with the saved ``meta``.

    Args:
        path: A file written by `save_model`.
        device: Where to put the model.
        trust_code: Rebuild a user's model (``<module>:<callable>``), which runs its code
            (`sparsebench.core.models.from_arch`); for files you trust, as the pipeline's own.

    Returns:
        The model (carrying ``model.arch``) and the ``meta`` it was saved with.

    Raises:
        sparsebench.util.errors.UsageError: One line, for a missing or unreadable file, one of
            another format, or an architecture that cannot be rebuilt.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise UsageError(f"model file: {str(path)!r} is not a {FORMAT} file")
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"model file: {str(path)!r} cannot be read ({exc})") from None
    arch = json.loads(metadata["arch"])
    try:
        model = from_arch(arch, trust_code=trust_code)
    except UsageError as exc:
        raise UsageError(f"model file: {str(path)!r}: {exc}") from None
    model.load_state_dict(state)
    return model.to(device), json.loads(metadata["meta"])
