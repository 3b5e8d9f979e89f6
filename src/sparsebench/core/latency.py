"""Honest CPU inference latency of a pruned model: dense kernels against ``torch.sparse`` CSR.

A pruned model stored densely runs exactly as fast as the unpruned one: the zeros are
multiplied like any other weight. `sparse_inference_model` builds a copy whose ``nn.Linear``
layers multiply by a CSR weight (``weight.to_sparse_csr()``), so the masked weights are not
stored and not multiplied; conv layers stay dense. `compare_latency` times both copies in one
process, interleaved, with ``torch.utils.benchmark.Timer``, and reports the medians and their
ratio.

The CSR products, bias fused (MKL sparse BLAS on CPU), are ``torch.addmv(b, W_csr, x)`` for a
single sample and ``torch.addmm(b[:, None], W_csr, x.T).T`` for a batch. Timed on this
project's 2-core CPU (1 and 2 threads, 90% and 99% sparse layers of LeNet-300-100) against
``torch.sparse.mm(W_csr, x.T).T + b``, ``(W_csr @ x.T).T + b``, ``torch.sparse.addmm`` and
``torch.mv(W_csr, x) + b``, they were the fastest (at 1 thread ``torch.sparse.addmm`` ties at
batch 256; at 2 threads it is slower). A dense @ CSR product (``x @ W_csr.T``) is 5-15x slower.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparsebench.core.sparsity import make_permanent

if TYPE_CHECKING:
    from torch.utils.benchmark import Measurement

__all__ = ["CSRLinear", "compare_latency", "sparse_inference_model"]


class CSRLinear(nn.Module):
    """Inference-only ``nn.Linear`` whose weight is a ``torch.sparse`` CSR tensor.

    Computes ``y = x W^T + b`` as ``addmv(b, W_csr, x)`` for one sample and as
    ``addmm(b[:, None], W_csr, x^T)^T`` for several; only the nonzero weights are stored
    (``weight_csr.values()``). Matches ``nn.Linear`` up to float rounding
    (the sum runs in a different order): within ``rtol=1e-5, atol=1e-5`` in float32 for
    default-initialised layers.

    Args:
        linear: The layer to convert; its current ``weight`` (zeros and all) and ``bias`` are
            copied, detached.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", "Sparse CSR tensor support", UserWarning)
            weight_csr = linear.weight.detach().to_sparse_csr()  # (out, in), nonzeros only
        self.register_buffer("weight_csr", weight_csr)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(*, in_features)`` to ``(*, out_features)``."""
        W, b = self.weight_csr, self.bias
        x_2d = x.reshape(-1, self.in_features)  # (N, in)
        if x_2d.shape[0] == 1:  # a matrix-vector product costs less per call than addmm
            y = torch.mv(W, x_2d[0]) if b is None else torch.addmv(b, W, x_2d[0])  # (out,)
            y_2d = y.unsqueeze(0)
        else:
            x_t = x_2d.t()  # (in, N)
            y_t = torch.mm(W, x_t) if b is None else torch.addmm(b[:, None], W, x_t)  # (out, N)
            y_2d = y_t.t()
        return y_2d.reshape(*x.shape[:-1], self.out_features)


def _dense_inference_model(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every ``nn.utils.prune`` mask folded into its weight."""
    # After a forward pass with autograd on, nn.utils.prune leaves the masked weight as a
    # non-leaf tensor attribute, which deepcopy refuses; copy it detached (it is recomputed).
    memo = {
        id(value): value.detach()
        for module in model.modules()
        for value in vars(module).values()
        if isinstance(value, torch.Tensor) and not value.is_leaf
    }
    dense = copy.deepcopy(model, memo)
    make_permanent(dense)
    return dense.eval()


def sparse_inference_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every ``nn.Linear`` runs on a CSR weight.

    The copy is a deep copy in eval mode; masks applied with ``torch.nn.utils.prune`` are folded
    in first, so masked weights are absent from the CSR structure. Every module of type exactly
    ``nn.Linear`` becomes a `CSRLinear` (a layer shared by several parents stays shared);
    conv layers and everything else are left as they are, and so are ``nn.Linear`` subclasses
    (e.g. ``nn.MultiheadAttention.out_proj``, whose weight is read directly). The original
    model is not modified.

    Args:
        model: A pruned (or dense) model.

    Returns:
        The inference copy; its outputs equal the model's up to float rounding.
    """
    sparse = _dense_inference_model(model)
    if type(sparse) is nn.Linear:
        return CSRLinear(sparse).eval()
    converted: dict[int, CSRLinear] = {}
    for parent in list(sparse.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                if id(child) not in converted:
                    converted[id(child)] = CSRLinear(child)
                setattr(parent, name, converted[id(child)])
    return sparse.eval()


def _input(input_shape: tuple[int, ...], batch_size: int) -> torch.Tensor:
    """A fixed random CPU input of shape ``(batch_size, *input_shape)``."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch_size, *input_shape), generator=generator)


def compare_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] = (1, 256),
    *,
    repeats: int = 100,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Median forward latency of ``model`` run densely and through CSR Linear layers.

    The dense side is a copy of ``model`` with its masks folded in (a plain model with exact
    zeros, so no mask multiplication is timed); the sparse side is `sparse_inference_model`.
    Each side is timed by a ``torch.utils.benchmark.Timer`` (which sets the thread count for
    the measurement and restores it). For each batch size there are ``repeats`` rounds; in each
    one, both sides time one forward pass on the same fixed random input with
    ``Timer.timeit(1)`` (two untimed warm-up passes of that side, then the timed one), the
    order alternating between rounds, so that load from other processes hits both alike. The
    rounds are merged (``Measurement.merge``) and their median is reported. Everything runs in
    this process under ``torch.inference_mode()``, in eval mode, on the CPU.

    Args:
        model: A pruned (or dense) model.
        input_shape: Shape of one sample without the batch dim, e.g. ``(1, 28, 28)``.
        batch_sizes: Batch sizes to time.
        repeats: Timed rounds per batch size (``evaluate.latency_repeats``).
        num_threads: Intra-op threads for the measurement; ``None`` uses the current
            ``torch.get_num_threads()``.

    Returns:
        ``{"num_threads": int, "batch": {batch_size: {"dense_s", "sparse_s", "ratio"}}}``:
        median seconds per forward pass of each side and ``ratio = sparse_s / dense_s``
        (below 1 when the sparse path is faster).
    """
    # lazy: torch.utils.benchmark loads torch's C++ extension tools, which warn on stderr
    # without CUDA; a run that measures no latency needs neither
    from torch.utils.benchmark import Measurement, Timer

    sides = {"dense": _dense_inference_model(model), "sparse": sparse_inference_model(model)}
    threads = torch.get_num_threads() if num_threads is None else num_threads
    result: dict[str, Any] = {"num_threads": threads, "batch": {}}
    with torch.inference_mode():
        for batch_size in batch_sizes:
            x = _input(input_shape, batch_size)
            timers = {name: Timer("model(x)", globals={"model": side, "x": x},
                                  num_threads=threads, description=name)
                      for name, side in sides.items()}
            rounds: dict[str, list[Measurement]] = {name: [] for name in timers}
            for round_ in range(repeats):
                for name in ("dense", "sparse")[:: 1 if round_ % 2 == 0 else -1]:
                    rounds[name].append(timers[name].timeit(1))
            dense_s, sparse_s = (Measurement.merge(rounds[name])[0].median for name in timers)
            result["batch"][batch_size] = {
                "dense_s": dense_s,
                "sparse_s": sparse_s,
                "ratio": sparse_s / dense_s,
            }
    return result
