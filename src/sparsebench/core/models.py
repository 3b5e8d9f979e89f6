"""Model zoo: the architectures of the papers the benchmark reproduces.

Every model takes images as a float tensor of shape ``(N, C, H, W)`` and returns logits of
shape ``(N, num_classes)``. Every builder accepts ``in_channels``, ``image_size`` (square
images) and ``num_classes``, with defaults that fit the model's data set. Only standard
``nn.Linear`` / ``nn.Conv2d`` layers carry the prunable weights, so that the ``weight`` of
every such module can be pruned with ``torch.nn.utils.prune``.

Models and their sources:

* ``mlp``: LeNet-300-100 (LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied
  to document recognition", Proc. IEEE 1998; the pruning baseline of Han, Pool, Tran and
  Dally, "Learning both weights and connections for efficient neural networks", NeurIPS 2015).
  ``widths=(200, 80)`` gives the 784-200-80-10 net of Bungert, Roith, Tenbrinck and Burger,
  "A Bregman learning framework for sparse neural networks", JMLR 23(192), 2022.
* ``lenet5``: the Caffe LeNet-5 (``caffe/examples/mnist/lenet_train_test.prototxt``) used by
  Zhang, Ye, Zhang, Tang, Wen, Fardad and Wang, "A systematic DNN weight pruning framework
  using alternating direction method of multipliers", ECCV 2018.
* ``resnet20``, ``resnet32``, ``resnet56``: the CIFAR-10 ResNets of He, Zhang, Ren and Sun,
  "Deep residual learning for image recognition", CVPR 2016, section 4.2, initialised as in
  He, Zhang, Ren and Sun, "Delving deep into rectifiers", ICCV 2015.
* ``convnet``: the Fashion-MNIST conv net of Bungert et al. (JMLR 2022), class ``mnist_conv``
  in ``models/mnist_conv.py`` of the authors' repository
  https://github.com/TimRoith/BregmanLearning.

Build a model by name with `build_model`; the returned module carries
``model.arch = {"name": ..., "args": {...}}`` (and ``"exclude"`` when layers are kept dense)
from which `from_arch` rebuilds it. Beside the zoo, ``torchvision:<name>`` builds a torchvision
classification model and ``<module>:<callable>`` a user's own (`sparsebench.core.external`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.core import external
from sparsebench.core.metrics import is_excluded, linear_conv_modules, prunable_modules
from sparsebench.util.errors import UsageError, unknown_name

__all__ = [
    "MLP",
    "MODELS",
    "BasicBlock",
    "ConvNet",
    "LeNet5",
    "ResNet",
    "ShortcutA",
    "build_model",
    "convnet",
    "from_arch",
    "lenet5",
    "mlp",
    "resnet",
    "resnet20",
    "resnet32",
    "resnet56",
]

# Smallest square input that survives two (5x5 valid conv -> 2x2 max-pool) stages with at
# least a 1x1 feature map: 16 -> 12 -> 6 -> 2 -> 1.
_MIN_IMAGE_SIZE_CONV_POOL = 16


# --------------------------------------------------------------------------------------------
# Argument checks: every bad value is a UsageError that names the config key.
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    """Whether ``value`` is an integer (``bool`` is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(key: str, value: object, minimum: int = 1, what: str = "") -> int:
    """Return ``value`` if it is an integer ``>= minimum``, else raise a `UsageError`.

    Args:
        key: The argument name, reported as ``model.args.<key>``.
        value: The value to check.
        minimum: The smallest allowed value.
        what: Optional reason shown when the value is too small (e.g. ``" for lenet5"``).

    Raises:
        UsageError: If ``value`` is not an integer or is smaller than ``minimum``.
    """
    allowed = f"allowed: an integer >= {minimum}"
    if not _is_int(value):
        raise UsageError(f"model.args.{key}: {value!r} is not an integer; {allowed}")
    if value < minimum:
        problem = f"is too small{what}" if what else "is out of range"
        raise UsageError(f"model.args.{key}: {value!r} {problem}; {allowed}")
    return int(value)


def _check_probability(key: str, value: object) -> float:
    """Return ``value`` as a float if it is a number in [0, 1), else raise a `UsageError`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise UsageError(f"model.args.{key}: {value!r} is invalid; allowed: a number in [0, 1)")
    return float(value)


def _check_widths(widths: object) -> tuple[int, ...]:
    """Return the hidden-layer widths as a tuple, or raise a `UsageError`.

    Raises:
        UsageError: Unless ``widths`` is a non-empty list or tuple of positive integers.
    """
    valid = (
        isinstance(widths, (list, tuple))
        and len(widths) > 0
        and all(_is_int(w) and w >= 1 for w in widths)
    )
    if not valid:
        raise UsageError(
            f"model.args.widths: {widths!r} is invalid; "
            "allowed: a non-empty list of positive integers"
        )
    return tuple(int(w) for w in widths)  # type: ignore[union-attr]


def _conv_pool_size(size: int, kernel_size: int = 5, pool: int = 2) -> int:
    """Side length after a valid (unpadded) ``kernel_size`` conv and a ``pool`` max-pool."""
    return (size - kernel_size + 1) // pool


# --------------------------------------------------------------------------------------------
# MLP (LeNet-300-100)
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Fully connected net: flatten, ``Linear + ReLU`` per hidden width, final ``Linear``.

    Args:
        in_features: Number of input features (``C * H * W``).
        widths: Hidden-layer widths, e.g. ``(300, 100)`` for LeNet-300-100.
        num_classes: Number of output logits.
    """

    def __init__(self, in_features: int, widths: Sequence[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for width in widths:
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        return self.layers(x)


def mlp(
    widths: Sequence[int] = (300, 100),
    *,
    in_channels: int = 1,
    image_size: int = 28,
    num_classes: int = 10,
) -> MLP:
    """Build an MLP; the default is LeNet-300-100 for MNIST (266,610 parameters).

    ``widths=(200, 80)`` is the 784-200-80-10 net of Bungert et al. (JMLR 2022), 173,890
    parameters. Default PyTorch initialisation.

    Args:
        widths: Hidden-layer widths, a non-empty list of positive integers.
        in_channels: Image channels.
        image_size: Image side length (any size >= 1).
        num_classes: Number of classes.

    Raises:
        UsageError: For an invalid argument.
    """
    hidden = _check_widths(widths)
    channels = _check_int("in_channels", in_channels)
    size = _check_int("image_size", image_size)
    classes = _check_int("num_classes", num_classes)
    return MLP(channels * size * size, hidden, classes)


# --------------------------------------------------------------------------------------------
# LeNet-5 (Caffe variant) and the Bregman conv net
# --------------------------------------------------------------------------------------------


class LeNet5(nn.Module):
    """The Caffe LeNet-5: conv1 (20 5x5) - pool - conv2 (50 5x5) - pool - fc1 (500) - fc2.

    As in Caffe's ``lenet_train_test.prototxt`` there is no nonlinearity after the
    convolutions: the only ReLU follows ``fc1`` (Caffe's ``ip1``). Pooling is 2x2 max-pooling
    with stride 2 (floor rounding; identical to Caffe's ceil rounding at 28x28). With
    ``dropout`` p > 0, dropout with probability p follows that ReLU, as in the pruning
    authors' own LeNet-5 (p = 0.5: layer ``drop1`` of Ye et al.'s ``ADMM-NN``
    ``examples/mnist/lenet_train_test_admm.prototxt``, and ``keep_prob`` after ``fc1`` in
    Zhang et al.'s TensorFlow ``LeNet-5/lenet_5_model.py``); p = 0 has no dropout module and
    computes exactly what the model computed before the option existed.

    Args:
        in_channels: Image channels.
        image_size: Image side length, at least 16.
        num_classes: Number of output logits.
        dropout: Dropout probability after ``fc1``'s ReLU, in [0, 1).
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        side = _conv_pool_size(_conv_pool_size(image_size))
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        return self.fc2(self.drop(self.relu(self.fc1(self.flatten(x)))))


def lenet5(*, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
           dropout: float = 0.0) -> LeNet5:
    """Build the Caffe LeNet-5 of the ADMM paper (Zhang et al., ECCV 2018).

    At the default 1x28x28 input it has 431,080 parameters, 430,500 of them conv/linear
    weights (flatten size 4*4*50 = 800). The flatten size is computed from ``image_size``.
    Default PyTorch initialisation (the paper prunes a pretrained model; Caffe's Xavier
    initialisation is not reproduced).

    Args:
        in_channels: Image channels.
        image_size: Image side length, at least 16.
        num_classes: Number of classes.
        dropout: Dropout probability after ``fc1``'s ReLU, in [0, 1) (the authors': 0.5).

    Raises:
        UsageError: For an invalid argument.
    """
    channels = _check_int("in_channels", in_channels)
    size = _check_int("image_size", image_size, _MIN_IMAGE_SIZE_CONV_POOL, " for lenet5")
    classes = _check_int("num_classes", num_classes)
    return LeNet5(channels, size, classes, _check_probability("dropout", dropout))


class ConvNet(nn.Module):
    """The ``mnist_conv`` net of Bungert et al. (JMLR 2022).

    ``conv(64, 5x5) - maxpool 2 - ReLU - conv(64, 5x5) - maxpool 2 - ReLU - flatten -
    fc(128) - ReLU - fc(num_classes)``, in the order of the authors' ``models/mnist_conv.py``
    (max-pooling before ReLU; the two commute). No dropout, no batch norm. The authors' model
    also standardises its input with the data set's mean and std; here that belongs to the
    data pipeline.

    Args:
        in_channels: Image channels.
        image_size: Image side length, at least 16.
        num_classes: Number of output logits.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        side = _conv_pool_size(_conv_pool_size(image_size))
        self.layers1 = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.layers2 = nn.Sequential(
            nn.Linear(64 * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        return self.layers2(self.layers1(x))


def convnet(*, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> ConvNet:
    """Build the Fashion-MNIST conv net of Bungert et al. (JMLR 2022).

    At the default 1x28x28 input it has 236,618 parameters, 236,352 of them conv/linear
    weights (flatten size 4*4*64 = 1024). The flatten size is computed from ``image_size``.
    Default PyTorch initialisation (the paper's sparse initialisation is part of the
    training method, not of the architecture).

    Args:
        in_channels: Image channels.
        image_size: Image side length, at least 16.
        num_classes: Number of classes.

    Raises:
        UsageError: For an invalid argument.
    """
    channels = _check_int("in_channels", in_channels)
    size = _check_int("image_size", image_size, _MIN_IMAGE_SIZE_CONV_POOL, " for convnet")
    classes = _check_int("num_classes", num_classes)
    return ConvNet(channels, size, classes)


# --------------------------------------------------------------------------------------------
# CIFAR ResNets (He et al. 2016, section 4.2)
# --------------------------------------------------------------------------------------------


class ShortcutA(nn.Module):
    """Option A shortcut: identity, subsampled by ``stride``, channels zero-padded.

    Has no parameters. The extra channels are appended as zeros after the input channels, as
    in the original Torch implementation (fb.resnet.torch, ``shortcutType = 'A'``).

    Args:
        in_planes: Input channels.
        out_planes: Output channels (>= ``in_planes``).
        stride: Spatial subsampling factor.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.extra_planes = out_planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample ``x`` spatially and pad it with zero channels."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_planes > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_planes))
        return x


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an option-A shortcut: ``relu(F(x) + x)``.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first conv (2 at the start of a stage that halves the map).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with ``6n + 2`` weighted layers (He et al. 2016, section 4.2).

    A 3x3 conv with 16 filters, three stages of ``n`` basic blocks with 16, 32 and 64 filters
    (the first block of stages 2 and 3 has stride 2), global average pooling and a
    fully connected layer. Conv and linear weights get Kaiming-normal initialisation
    (He et al. 2015, fan-in, ReLU gain); BatchNorm starts at weight 1, bias 0.

    Args:
        n: Blocks per stage.
        in_channels: Image channels.
        num_classes: Number of output logits.
    """

    def __init__(self, n: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_stage(16, 16, n, stride=1)
        self.layer2 = self._make_stage(16, 32, n, stride=2)
        self.layer3 = self._make_stage(32, 64, n, stride=2)
        self.fc = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _make_stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        """A stage of ``n`` basic blocks; only the first one changes size."""
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        """Kaiming-normal init of every conv and linear weight."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))
        return self.fc(out)


def resnet(
    depth: int,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
) -> ResNet:
    """Build a CIFAR ResNet of the given depth (``6n + 2``: 20, 32, 44, 56, 110, ...).

    Args:
        depth: Number of weighted layers, ``6n + 2`` with ``n >= 1``.
        in_channels: Image channels.
        image_size: Image side length; the net pools globally, so any size >= 1 works and this
            only records the expected input.
        num_classes: Number of classes.

    Raises:
        UsageError: For an invalid argument.
    """
    if not (_is_int(depth) and depth >= 8 and (depth - 2) % 6 == 0):
        raise UsageError(
            f"model.args.depth: {depth!r} is invalid; "
            "allowed: an integer 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110)"
        )
    channels = _check_int("in_channels", in_channels)
    _check_int("image_size", image_size)
    classes = _check_int("num_classes", num_classes)
    return ResNet((depth - 2) // 6, channels, classes)


def resnet20(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> ResNet:
    """ResNet-20 for CIFAR-10 (n = 3; 269,722 parameters). See `resnet`."""
    return resnet(20, in_channels=in_channels, image_size=image_size, num_classes=num_classes)


def resnet32(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> ResNet:
    """ResNet-32 for CIFAR-10 (n = 5; 464,154 parameters). See `resnet`."""
    return resnet(32, in_channels=in_channels, image_size=image_size, num_classes=num_classes)


def resnet56(*, in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> ResNet:
    """ResNet-56 for CIFAR-10 (n = 9; 853,018 parameters). See `resnet`."""
    return resnet(56, in_channels=in_channels, image_size=image_size, num_classes=num_classes)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet5": lenet5,
    "convnet": convnet,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
}
"""Model name -> builder. Every builder takes keyword arguments only (``mlp`` also takes
``widths`` positionally) and validates them."""


def _check_kwargs(builder: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """Raise a `UsageError` for the first keyword that ``builder`` does not accept."""
    allowed = list(inspect.signature(builder).parameters)
    for key in kwargs:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(
                f"model.args.{key}: unknown argument; {hint}allowed: {', '.join(allowed)}"
            )


def unknown_model(key: str, name: object) -> UsageError:
    """The error for a ``model.name`` of none of the three forms."""
    error = unknown_name(key, name, MODELS)
    return UsageError(f"{error}, torchvision:<name> or <module>:<callable>")


def _builder(name: str, kwargs: dict[str, Any]) -> Callable[..., nn.Module]:
    if not isinstance(name, str):
        raise unknown_model("model.name", name)
    if external.is_torchvision(name):
        return external.torchvision_builder(name)
    if external.is_code(name):
        return external.code_builder(name)
    if name not in MODELS:
        raise unknown_model("model.name", name)
    _check_kwargs(MODELS[name], kwargs)
    return MODELS[name]


def build_model(name: str, *, exclude: Sequence[str] = (), **kwargs: Any) -> nn.Module:
    """Build a model by name: a zoo name, ``torchvision:<name>`` or ``<module>:<callable>``
    (`sparsebench.core.external`).

    The returned module carries ``model.arch = {"name": name, "args": dict(kwargs)}`` (with
    ``"exclude"`` when given), so `from_arch` rebuilds the same architecture.

    Args:
        name: A key of `MODELS`, ``torchvision:<name>`` or ``<module>:<callable>``.
        exclude: Layers (or modules holding them) kept dense: not prunable
            (`sparsebench.core.metrics.prunable_modules`).
        **kwargs: Arguments of the model's builder (``model.args`` in a config).

    Returns:
        The freshly initialised model.

    Raises:
        UsageError: For an unknown name, an unknown argument or an invalid argument value, an
            ``exclude`` name that is no layer, or a prunable layer whose weight bypasses its
            module's forward (`check_masks_apply`).
    """
    model = _builder(name, kwargs)(**kwargs)
    _check_exclude(model, name, exclude)
    model.arch = {"name": name, "args": dict(kwargs),
                  **({"exclude": list(exclude)} if exclude else {})}
    check_masks_apply(model, name)
    return model


def from_arch(arch: dict[str, Any], *, trust_code: bool = False) -> nn.Module:
    """Rebuild the model a ``model.arch`` describes (a model file's metadata).

    Args:
        arch: ``{"name", "args"}`` and optionally ``"exclude"``.
        trust_code: Build a user's builder (``<module>:<callable>``), which imports and runs
            its code; only for files you trust (sparsebench's own run files).

    Raises:
        UsageError: As `build_model`, or for a user's builder without ``trust_code``.
    """
    name = arch["name"]
    if isinstance(name, str) and external.is_code(name) and not trust_code:
        raise UsageError(f"arch.name: {name!r} would import and run code of module "
                         f"{name.rpartition(':')[0]}; allowed: a zoo or torchvision:<name> "
                         "model, or trust_code=True for a file you trust")
    return build_model(name, exclude=arch.get("exclude") or (), **arch["args"])


def _check_exclude(model: nn.Module, name: str, exclude: Sequence[str]) -> None:
    """Every ``exclude`` entry names a Linear/Conv layer or a module holding some, and one
    prunable layer at least is left."""
    if isinstance(exclude, str):
        raise UsageError(f"model.exclude: {exclude!r} is not a list; allowed: a list of layer "
                         "names")
    layers = [n for n, _ in linear_conv_modules(model)]
    for entry in exclude:
        if not isinstance(entry, str) or not any(is_excluded(n, [entry]) for n in layers):
            close = difflib.get_close_matches(str(entry), layers, n=3)
            listed = ", ".join([*close, *(n for n in layers if n not in close)])
            raise UsageError(f"model.exclude: {entry!r} is not a prunable layer of {name}; "
                             f"allowed: {listed} (or a module holding some of them)")
    if layers and all(is_excluded(n, exclude) for n in layers):
        raise UsageError(f"model.exclude: {list(exclude)} leaves {name} no prunable layer; "
                         "allowed: a subset of its Linear/Conv layers")


#: module types whose forward reads the weight of Linear children directly (torch's
#: ``F.multi_head_attention_forward``, torchvision's ``shifted_window_attention``), so the
#: forward pre-hook that applies a child's mask (`sparsebench.core.sparsity.apply_masks`)
#: never runs: (the package, class name) -> the children read
BYPASSING: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "MultiheadAttention"): ("out_proj",),
    ("torchvision", "ShiftedWindowAttention"): ("qkv", "proj"),
    ("torchvision", "ShiftedWindowAttention3d"): ("qkv", "proj"),
}


def _bypassed(module: nn.Module) -> tuple[str, ...]:
    for cls in type(module).__mro__:
        children = BYPASSING.get((cls.__module__.split(".")[0], cls.__name__))
        if children is not None:
            return children
    return ()


def check_masks_apply(model: nn.Module, name: str) -> None:
    """Refuse a model with a prunable layer whose weight its parent reads directly instead of
    calling the layer (`BYPASSING`): its mask would never apply. Such a parent's own weights
    (``nn.MultiheadAttention.in_proj_weight``) are no module's and stay dense anyway.

    Raises:
        UsageError: naming the first such parent, unless ``model.exclude`` holds it.
    """
    prunable = {n for n, _ in prunable_modules(model)}
    for layer, module in model.named_modules():
        read = [f"{layer}.{c}" if layer else c for c in _bypassed(module)]
        if any(r in prunable for r in read):
            raise UsageError(
                f"model.name: {name} has layer {layer!r} ({type(module).__name__}) whose weights "
                f"bypass their module's forward (it reads {'.weight, '.join(read)}.weight "
                f"directly, so a mask there would never apply); allowed: exclude it "
                f"(model.exclude: [{layer}] keeps it dense), or a model without such layers")
