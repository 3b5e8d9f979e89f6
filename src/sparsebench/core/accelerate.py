"""GPU-ready training options of a suite (``execution.precision``, ``execution.channels_last``,
``execution.compile``): how the training forward pass runs, not what it computes.

* ``precision: bf16`` runs each training forward pass under `torch.autocast` with bfloat16
  (Micikevicius et al., "Mixed Precision Training", ICLR 2018; bf16 needs no loss scaling).
  Parameters, gradients, optimizer state, masks and the methods' variables (ADMM's Z and U,
  SAS-ADMM's iterates) stay float32: autocast casts the operands of matrix products inside
  the forward pass only. Evaluation stays float32.
* ``channels_last: true`` stores a convolutional model's 4-d weights and its input batches in
  NHWC order, the layout cuDNN's tensor-core kernels prefer. Refused for a model without
  convolutions (an MLP has no 4-d tensor to lay out).
* ``compile: true`` trains through ``torch.compile(model)`` (off by default; refused where
  torch.compile cannot run: no TorchDynamo for this Python, or no C++ compiler for the CPU
  backend).

The defaults (fp32, false, false) leave the training loop exactly as it was. The options are
set once per process by the stage (`configure`); forked workers inherit them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sparsebench.util.errors import UsageError


@dataclass(frozen=True)
class Options:
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    @property
    def default(self) -> bool:
        return self == Options()


_OPTIONS = Options()


def configure(options: Options) -> None:
    """Set this process's training options (a stage does it once, before training)."""
    global _OPTIONS
    _OPTIONS = options


def current() -> Options:
    return _OPTIONS


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def check(options: Options, device: torch.device, model: nn.Module) -> None:
    """Refuse options this device or model cannot run, one line each."""
    if options.precision == "bf16" and not bf16_supported(device):
        raise UsageError(f"execution.precision: 'bf16' is not supported on {device} (no "
                         "bfloat16 arithmetic there); allowed: fp32")
    if options.channels_last and not has_conv(model):
        raise UsageError(f"execution.channels_last: true needs a convolutional model; "
                         f"{type(model).__name__} has no convolution; allowed: false")
    if options.compile and (why := compile_unavailable(device)):
        raise UsageError(f"execution.compile: true cannot run here ({why}); allowed: false")


def bf16_supported(device: torch.device) -> bool:
    """CPU autocast always has bfloat16; CUDA where the GPU has it (Ampere and later)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type in ("cpu", "mps")


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "TorchDynamo does not support this Python"
    if device.type == "cpu":
        compiler = os.environ.get("CXX") or "g++"
        if shutil.which(compiler) is None:
            return f"no C++ compiler {compiler!r} for the CPU backend (set CXX)"
    return None


def prepare(model: nn.Module, wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """The module to train ``model`` through: its weights in channels-last order first (when
    the options say so), then ``wrap(model)`` (DDP under torchrun, else the model), compiled
    when the options say so."""
    if _OPTIONS.channels_last:
        model.to(memory_format=torch.channels_last)
    net = wrap(model)
    return torch.compile(net) if _OPTIONS.compile else net


def batch(xb: torch.Tensor) -> torch.Tensor:
    """An input batch in the layout the options ask for."""
    if _OPTIONS.channels_last and xb.dim() == 4:
        return xb.contiguous(memory_format=torch.channels_last)
    return xb


def autocast(device: torch.device):
    """bf16 autocast around a training forward pass, or nothing."""
    if _OPTIONS.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
