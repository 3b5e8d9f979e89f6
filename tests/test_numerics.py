import pytest
import torch

from sparsebench.numerics import flush_subnormals

TINY = torch.finfo(torch.float32).tiny


@pytest.fixture
def gradual_underflow():
    """Leave the process as the test found it: IEEE gradual underflow (subnormals kept)."""
    yield
    torch.set_flush_denormal(False)


def test_flush_subnormals_returns_whether_it_took_effect(gradual_underflow):
    assert flush_subnormals(True) in (True, False)
    assert isinstance(flush_subnormals(False), bool)


def test_flushed_products_below_tiny_are_exactly_zero(gradual_underflow):
    x = torch.full((1000,), 1e-30)
    if not flush_subnormals(True):
        pytest.skip("this CPU cannot flush subnormals (torch.set_flush_denormal returns False)")
    assert torch.count_nonzero(x * 1e-10) == 0


def test_without_flush_products_below_tiny_are_subnormal(gradual_underflow):
    x = torch.full((1000,), 1e-30)
    flush_subnormals(False)
    y = (x * 1e-10).abs()
    assert ((y > 0) & (y < TINY)).all()


def test_flush_keeps_normal_floats_exact(gradual_underflow):
    x = torch.randn(1000)
    expected = x * 0.9 + 1e-3
    if not flush_subnormals(True):
        pytest.skip("this CPU cannot flush subnormals")
    assert torch.equal(x * 0.9 + 1e-3, expected)
