"""Models from outside the zoo: torchvision's classification models, a user's own builder, and
pretrained weights from a local file.

``model.name`` has three forms (`sparsebench.core.models.build_model`):

* a zoo name (``mlp``, ``resnet20``, ...: `sparsebench.core.models.MODELS`);
* ``torchvision:<name>``: a classification model of TorchVision (TorchVision maintainers and
  contributors, "TorchVision: PyTorch's computer vision library", 2016), any name of
  ``torchvision.models.list_models(module=torchvision.models)``. It is built with
  ``weights=None`` (nothing is ever downloaded: ``model.weights`` loads a local file) and
  ``num_classes`` from the data; it takes 3-channel images. ``image_size`` is not passed (the
  convolutional ones pool adaptively; a ViT wants its own 224x224).
* ``<module>:<callable>``: a user's builder. ``module`` is a dotted module importable from the
  working directory (the suite's, which holds params.yaml and ``data/``) or ``sys.path``
  (``my_models.nets:build``), or a Python file, relative to the working directory
  (``models/my_net.py:build``; its folder is importable while it runs). The callable gets
  ``num_classes`` (and ``in_channels`` and ``image_size`` when its signature takes them) and
  ``model.args``, and returns an ``nn.Module``.

The user's builder is code: `source_files` names its files under the working directory, which
key every run and pretrain like the data file (`sparsebench.pipeline.cache.fingerprint`), so
editing it retrains. An installed package's code is versioned like torch: not fingerprinted.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from sparsebench.util.errors import UsageError

TORCHVISION = "torchvision:"
#: what the keyword arguments of a torchvision builder may not hold: weights are local files
DOWNLOADS = ("weights", "weights_backbone", "progress")
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
CODE_FORMS = ("<module>:<callable> (my_models.nets:build) or <file>.py:<callable> "
              "(models/my_net.py:build)")


def is_torchvision(name: str) -> bool:
    return name.startswith(TORCHVISION)


def is_code(name: str) -> bool:
    """Whether ``name`` is a user's builder, ``<module>:<callable>`` (code that runs)."""
    return ":" in name and not is_torchvision(name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------


def torchvision_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of ``torchvision:<name>``: ``build(in_channels=3, image_size=None,
    num_classes=1000, **kwargs)``, with ``weights=None``.

    Raises:
        UsageError: ``<name>`` is not a torchvision classification model (with close names).
    """
    import torchvision.models as tvm  # lazy: a second to import, and only for these names

    short = name[len(TORCHVISION):]
    known = tvm.list_models(module=tvm)
    if short not in known:
        close = difflib.get_close_matches(short, known, n=3)
        hint = f"did you mean {', '.join(TORCHVISION + c for c in close)}? " if close else ""
        raise UsageError(f"model.name: {name!r} is not a torchvision classification model; "
                         f"{hint}allowed: torchvision:<name> for any of the {len(known)} names of "
                         "torchvision.models.list_models(module=torchvision.models), e.g. "
                         "resnet18, resnet50, vgg16_bn, mobilenet_v3_large")

    def build(*, in_channels: int = 3, image_size: int | None = None, num_classes: int = 1000,
              **kwargs: Any) -> nn.Module:
        if in_channels != 3:
            raise UsageError(f"model.name: {name} takes 3-channel images, and the data have "
                             f"{in_channels!r}; allowed: a data set of RGB images, or a builder "
                             f"of your own, {CODE_FORMS}")
        for key in DOWNLOADS:
            if key in kwargs:
                raise UsageError(f"model.args.{key}: not allowed for {name}, which is built with "
                                 "weights=None (nothing is downloaded); allowed: model.weights: "
                                 "a local state_dict file")
        try:
            return tvm.get_model(short, weights=None, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise UsageError(f"model.args: {kwargs!r} cannot build {name} ({_first_line(exc)}); "
                             f"allowed: keyword arguments of torchvision.models.{short}") from None

    return build


# --------------------------------------------------------------------------------------------
# A user's builder: <module>:<callable>
# --------------------------------------------------------------------------------------------


@contextmanager
def _importable(*folders: Path) -> Iterator[None]:
    """``folders`` on ``sys.path`` (first) while the user's module imports and builds."""
    added = [str(f) for f in folders if str(f) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            if folder in sys.path:
                sys.path.remove(folder)


def _parts(name: str) -> tuple[str, str]:
    """``(module, callable)`` of ``<module>:<callable>``, or a one-line `UsageError`."""
    module, _, attr = name.rpartition(":")
    dotted = all(p.isidentifier() for p in module.split("."))
    if not attr.isidentifier() or not (module.endswith(".py") or dotted):
        raise UsageError(f"model.name: {name!r} is not a model name; allowed: a zoo name, "
                         f"torchvision:<name>, or {CODE_FORMS}")
    return module, attr


def _folders(module: str) -> tuple[Path, ...]:
    cwd = Path.cwd()
    return (cwd, Path(module).resolve().parent) if module.endswith(".py") else (cwd,)


def _import(module: str) -> ModuleType:
    """Import ``module``: a dotted name, or a ``.py`` file (under a name unique to its path,
    registered in ``sys.modules`` as an import would be)."""
    if not module.endswith(".py"):
        return importlib.import_module(module)
    path = Path(module).resolve()
    key = f"sparsebench_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if key in sys.modules:
        return sys.modules[key]
    if not path.is_file():
        raise FileNotFoundError(f"no file {module} in {Path.cwd()}")
    spec = importlib.util.spec_from_file_location(key, path)
    loaded = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[key] = loaded
    try:
        spec.loader.exec_module(loaded)  # type: ignore[union-attr]
    except BaseException:
        del sys.modules[key]
        raise
    return loaded


def _callable(name: str) -> Callable[..., Any]:
    """The user's callable named by ``<module>:<callable>``, imported."""
    module, attr = _parts(name)
    try:
        with _importable(*_folders(module)):
            found = _import(module)
    except Exception as exc:  # the user's module may raise anything while it imports
        raise UsageError(f"model.name: {name!r}: module {module} does not import "
                         f"({_first_line(exc)}); allowed: a module importable from the working "
                         f"directory or sys.path, or a file, as {CODE_FORMS}") from None
    fn = getattr(found, attr, None)
    if fn is None or not callable(fn):
        names = [n for n in dir(found) if not n.startswith("_") and callable(getattr(found, n))]
        close = difflib.get_close_matches(attr, names, n=3)
        listed = ", ".join([*close, *(n for n in names if n not in close)]) or "none"
        what = "has no attribute" if fn is None else "has a non-callable"
        raise UsageError(f"model.name: {name!r}: module {module} {what} {attr!r}; allowed: a "
                         f"callable of it: {listed}")
    return fn


def code_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of ``<module>:<callable>``: ``build(**kwargs)`` calls the user's callable with
    ``num_classes``, ``in_channels`` and ``image_size`` where it takes them, and ``model.args``.

    Raises:
        UsageError: the module does not import, has no such callable, the callable takes no
            ``num_classes`` or an argument of ``model.args``, raises, or returns no module.
    """
    fn = _callable(name)
    module, _ = _parts(name)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def build(**kwargs: Any) -> nn.Module:
        if "num_classes" not in params and not anything:
            raise UsageError(f"model.name: {name!r} takes no num_classes argument; allowed: a "
                             "callable taking num_classes (and in_channels, image_size if it "
                             "wants them) and the keys of model.args")
        call = {}
        for key, value in kwargs.items():
            if key in params or anything:
                call[key] = value
            elif key not in ("in_channels", "image_size"):
                close = difflib.get_close_matches(str(key), list(params), n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise UsageError(f"model.args.{key}: unknown argument of {name}; {hint}allowed: "
                                 f"{', '.join(params)}")
        try:
            with _importable(*_folders(module)):
                model = fn(**call)
        except UsageError:
            raise
        except Exception as exc:  # the user's code may raise anything
            raise UsageError(f"model.name: {name!r} raised {_first_line(exc)}; allowed: a "
                             f"callable that builds the model from {sorted(call)}") from None
        if not isinstance(model, nn.Module):
            raise UsageError(f"model.name: {name!r} returned {type(model).__name__!r}, not an "
                             "nn.Module; allowed: a callable that returns a torch.nn.Module")
        return model

    return build


def source_files(name: str) -> list[Path]:
    """The files of a user's builder that key its runs: the module's file and the one that
    defines the callable, when under the working directory (relative to it); a ``.py`` path as
    given. None for a zoo or torchvision model (their code is versioned with the package).

    Raises:
        UsageError: as `code_builder`, when the module does not import.
    """
    if not is_code(name):
        return []
    module, _ = _parts(name)
    fn = _callable(name)
    found = [Path(module)] if module.endswith(".py") else []
    cwd = Path.cwd().resolve()
    defining = [getattr(sys.modules.get(module), "__file__", None), _source_of(fn)]
    for file in filter(None, defining):
        try:
            relative = Path(file).resolve().relative_to(cwd)
        except ValueError:
            continue  # installed code, outside the suite
        if relative.resolve() not in [f.resolve() for f in found]:
            found.append(relative)
    return found


def model_files(name: str, weights: str | None) -> list[Path]:
    """The files a model's runs are keyed by beside the data: its builder's source
    (`source_files`) and its ``model.weights``."""
    return [*source_files(name), *([] if weights is None else [Path(weights)])]


def _source_of(fn: Callable[..., Any]) -> str | None:
    try:
        return inspect.getsourcefile(fn)
    except TypeError:  # a builtin or C extension
        return None


# --------------------------------------------------------------------------------------------
# Pretrained weights: model.weights
# --------------------------------------------------------------------------------------------


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in a local file: a torch ``.pt``/``.pth`` (read with
    ``weights_only=True``: no pickled code runs) or a ``.safetensors`` file.

    Raises:
        UsageError: a missing or unreadable file, or one that holds no state_dict.
    """
    file = Path(path)
    allowed = "allowed: a local state_dict file (.pt, .pth) or a .safetensors file"
    if file.suffix not in WEIGHT_SUFFIXES:
        raise UsageError(f"model.weights: {str(path)!r} has an unknown suffix; {allowed}")
    if not file.is_file():
        raise UsageError(f"model.weights: {str(path)!r} does not exist; {allowed}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(file)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many kinds for a bad file
        raise UsageError(f"model.weights: {str(path)!r} cannot be read ({_first_line(exc)}); "
                         f"{allowed}") from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UsageError(f"model.weights: {str(path)!r} holds no state_dict (names -> tensors); "
                         f"{allowed}")
    return state


def weights_problem(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """The first key ``state`` lacks (a batch norm's ``num_batches_tracked`` may be missing) or
    has too many, or the first shape that differs from ``model``'s; None when it fits."""
    own = model.state_dict()
    for key in own:
        if key not in state and not key.endswith("num_batches_tracked"):
            return f"missing key {key!r}"
    for key, tensor in state.items():
        if key not in own:
            return f"unexpected key {key!r}"
        if tuple(tensor.shape) != tuple(own[key].shape):
            return (f"key {key!r} has shape {tuple(tensor.shape)}, the model's "
                    f"{tuple(own[key].shape)}")
    return None


def load_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Load the state_dict at ``path`` into ``model`` (built as ``name``); on the meta device
    only check that it fits.

    Raises:
        UsageError: as `read_weights`, or a file for another architecture (the first missing or
            unexpected key, or shape mismatch).
    """
    state = read_weights(path)
    problem = weights_problem(model, state)
    if problem:
        raise UsageError(f"model.weights: {str(path)!r} does not fit {name}: {problem}; allowed: "
                         "a state_dict of this model (model.name with model.args and the data's "
                         "classes)")
    if not any(t.is_meta for t in model.state_dict().values()):
        model.load_state_dict(state, strict=False)  # checked above; strict would want
        # num_batches_tracked from a file of an older torch
