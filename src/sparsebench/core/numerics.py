"""Floating-point settings of a sparsebench process: subnormal numbers flushed to zero.

Values that decay geometrically toward zero (a momentum buffer or Adam moment whose gradient
has become zero, an entry an l1 or ADMM penalty pulls to zero) pass through the subnormal range
0 < |x| < torch.finfo(float32).tiny (about 1.2e-38), where many x86 CPUs compute many times
slower (a microcode assist per operation): issue 13 measured ADMM's late prune epochs on the
default suite at 10 to 36 s against 0.8 s (benchmarks/late_epochs.md).

Where a value is meant to be exactly zero, sparsebench keeps it so at the cause
(`sparsebench.core.sparsity.apply_masks` zeroes the optimizer state of masked entries).
`flush_subnormals` is the guard for what remains: the CPU treats subnormal inputs and results as
zero (the FTZ and DAZ bits of MXCSR on x86). A subnormal float32 is below 1.2e-38,
far below anything the methods' updates can resolve against a weight of order 1e-3, so flushing
does not change a result beyond the last bits of values that are already negligible.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import torch

PROBE = 1 << 18  # entries: enough for every intra-op thread to take a share (grain 32768)


def flush_subnormals(enabled: bool = True) -> bool:
    """Flush subnormal floats to zero on the CPU (`torch.set_flush_denormal`) in this process.

    The setting is per thread. Threads started afterwards inherit it (Linux), but PyTorch's
    intra-op (OpenMP) threads, once started by a first parallel operation, keep what they had:
    call this at the start of every process (or worker) that trains, before its first tensor
    operation. With ``enabled``, a parallel probe checks that every thread flushes.

    Args:
        enabled: True flushes subnormals; False restores IEEE gradual underflow.

    Returns:
        Whether the setting took effect: False on CPUs and platforms where PyTorch cannot set
        it (an x86 CPU without SSE3, some non-x86 builds), where it is a no-op, and when some
        intra-op thread started before the call still computes subnormals.
    """
    global _FLUSH
    _FLUSH = False
    if not torch.set_flush_denormal(enabled):
        return False
    if enabled:
        probe = torch.full((PROBE,), 1e-30) * 1e-10  # 1e-40: subnormal unless flushed
        _FLUSH = not torch.count_nonzero(probe)
        return _FLUSH
    return True


_FLUSH = False


def flush_enabled() -> bool:
    """Whether `flush_subnormals` took effect in this process (recorded with every run)."""
    return _FLUSH


@functools.cache
def arithmetic_digest(threads: int) -> str:
    """A digest of the bits of a fixed float32 computation on the CPU with ``threads`` intra-op
    threads: a linear layer's and a convolution's weight gradients over a batch (the BLAS and
    oneDNN kernels training runs, whose reductions split by thread) and a long sum. Two
    processes whose digests differ round differently (another CPU model or instruction set,
    torch build or thread count), so their runs match only to within the seed-to-seed noise;
    equal digests make bit-equal runs likely, not certain.

    One thread computes here. More are computed in a new interpreter (with this process's
    subnormal setting): a parallel operation starts GNU OpenMP's thread pool, and a process
    forked after that hangs at its own first parallel operation, so a stage, which forks its
    workers, computes on one thread alone. The value is kept for the process (and the workers
    it forks).

    Args:
        threads: The intra-op thread count the digest is of.

    Returns:
        The first 12 hex digits of the SHA-256 of the computation's bits.
    """
    if threads == 1:
        return _digest(1)
    package = Path(__file__).resolve().parents[2]  # the folder holding sparsebench
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from sparsebench.core import numerics as n; "
            "n.flush_subnormals(sys.argv[3] == '1'); print(n._digest(int(sys.argv[2])))")
    done = subprocess.run([sys.executable, "-c", code, str(package), str(threads),
                           "1" if _FLUSH else "0"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(f"arithmetic digest of {threads} threads: {lines[-1]}")
    return done.stdout.strip()


def _digest(threads: int) -> str:
    """`arithmetic_digest` computed in this process."""
    import hashlib

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        x, w = torch.randn(128, 784, generator=gen), torch.randn(300, 784, generator=gen)
        image, kernel = (torch.randn(128, 1, 28, 28, generator=gen),
                         torch.randn(6, 1, 5, 5, generator=gen))
        w.requires_grad_(True)
        kernel.requires_grad_(True)
        torch.nn.functional.linear(x, w).square().sum().backward()
        torch.nn.functional.conv2d(image, kernel).square().sum().backward()
        parts = (w.grad, kernel.grad, torch.randn(16 * PROBE, generator=gen).sum())
        digest = hashlib.sha256(b"".join(p.numpy().tobytes() for p in parts))
    finally:
        torch.set_num_threads(before)
    return digest.hexdigest()[:12]
