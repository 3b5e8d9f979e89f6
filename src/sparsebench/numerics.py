"""CPU floating-point settings every training process runs with.

Subnormal floats (0 < |x| < 1.2e-38 in float32) are computed many times slower than normal ones
on x86 CPUs. Values that decay geometrically toward zero end up there; flushing them to zero is
`torch.set_flush_denormal`, a documented torch setting.
"""

from __future__ import annotations

import torch

_FLUSH = False


def flush_subnormals(enabled: bool = True) -> bool:
    """Flush subnormal floats to zero on the CPU (``torch.set_flush_denormal``); return whether
    the setting took effect (False where the CPU does not support it)."""
    global _FLUSH
    _FLUSH = bool(torch.set_flush_denormal(enabled)) and enabled
    return _FLUSH


def flush_enabled() -> bool:
    """Whether `flush_subnormals` is on in this process."""
    return _FLUSH
