"""flush_subnormals changes per-thread CPU state that PyTorch's worker threads inherit when they
start, so every test that turns it on runs in a fresh interpreter: nothing leaks into the
other tests of the session."""

import subprocess
import sys
import textwrap

import pytest

HEADER = """
import torch
from sparsebench.core.numerics import flush_subnormals
torch.set_num_threads(2)
def x():  # not at import: a parallel fill would start the worker threads
    return torch.full((1 << 18,), 1e-30)
def subnormals(t):
    a = t.abs()
    return int(((a > 0) & (a < torch.finfo(torch.float32).tiny)).sum())
"""


def _run(code: str) -> list[str]:
    """Run ``code`` after HEADER in a new interpreter; its printed lines."""
    done = subprocess.run([sys.executable, "-c", HEADER + textwrap.dedent(code)],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_flushed_results_below_tiny_are_exactly_zero_on_every_thread():
    took, left = _run("""
        took = flush_subnormals(True)
        print(took, subnormals(x() * 1e-10) if took else 0)
    """)
    if took == "False":
        pytest.skip("this CPU cannot flush subnormals (torch.set_flush_denormal returns False)")
    assert left == "0"


def test_without_flush_results_below_tiny_are_subnormal():
    took, left = _run("""
        print(flush_subnormals(False), subnormals(x() * 1e-10))
    """)
    assert took in ("True", "False")
    assert left == str(1 << 18)


def test_flush_keeps_normal_floats_exact():
    (same,) = _run("""
        y = torch.randn(1 << 18, generator=torch.Generator().manual_seed(0))
        before = y * 0.9 + 1e-3
        flush_subnormals(True)
        print(torch.equal(y * 0.9 + 1e-3, before))
    """)
    assert same == "True"


def test_threads_started_before_the_call_are_reported():
    (took,) = _run("""
        x().mul(2.0)  # the first parallel operation starts the worker threads unflushed
        print(flush_subnormals(True))
    """)
    assert took == "False"
