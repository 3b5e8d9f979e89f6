"""safetensors files that are the same bytes for the same tensors and metadata.

safetensors writes the metadata map of its JSON header in a random order (a Rust ``HashMap``:
twenty saves of the same seven-key map gave twenty different files), so every run of a stage
wrote a different file for the same content and DVC saw a changed output. `safetensors_bytes`
re-serialises the header with sorted keys; the tensor data, which safetensors already lays out
in a fixed order (by dtype, then name), is kept as it is. Readers see an ordinary file.
"""

from __future__ import annotations

import json

import torch


def safetensors_bytes(tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save(tensors, metadata)`` with its header in a canonical order."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + data[8 + n:]
