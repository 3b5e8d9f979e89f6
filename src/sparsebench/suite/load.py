"""Read and validate params.yaml: the schema (`suite.params`), then every rule across keys and
against the data set, the model and the methods, each refused in one line.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sparsebench.core.accelerate import check as check_options
from sparsebench.core.external import load_weights
from sparsebench.core.models import build_model
from sparsebench.core.schema import merge_phase, validate
from sparsebench.core.train import resolve_device
from sparsebench.data import DATASETS, SYNTHETIC, get_spec
from sparsebench.data.augment import CROP_FLIP_SHAPE
from sparsebench.data.folders import FOLDER_DATASETS, IMAGENET_TRAIN_SIZE, scan
from sparsebench.methods import build_method, method_params
from sparsebench.suite.params import DataParams, LevelsParams, Params, check_name
from sparsebench.suite.plan import check_budget
from sparsebench.suite.space import check_param, check_spaces
from sparsebench.suite.tuned import overlay, read_tuned, tuned_path
from sparsebench.util.errors import UsageError, unknown_name

if TYPE_CHECKING:
    from torch import nn


def load_params(path: str | Path = "params.yaml", *,
                tuned: bool = True) -> tuple[Params, dict[str, Any]]:
    """Read and validate params.yaml; return the shared sections and each method's params.

    Args:
        path: the params file.
        tuned: lay ``tuned/<key>.yaml`` over ``methods.<key>`` where it exists (see
            `sparsebench.suite.tuned`); tuning reads the hand-set values (False).

    Raises:
        UsageError: one line naming the key, the value and what is allowed.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"params: {str(path)!r} does not exist; allowed: a params file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"params: {str(path)!r} cannot be read ({exc})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise UsageError(f"params: {str(path)!r} is not valid YAML{at}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"params: {str(path)!r} must hold a mapping of sections, not {raw!r:.40}")
    params = validate(Params, raw)
    check_name("suite", params.suite)
    for key in params.methods:
        check_name("methods", key)
    resolve_device(params.device)
    n_train = check_data(params.data)
    if params.data.dataset not in (*DATASETS, *FOLDER_DATASETS, SYNTHETIC):
        raise unknown_name("data.dataset", params.data.dataset,
                           (*DATASETS, *FOLDER_DATASETS, SYNTHETIC))
    model = _check_model_args(params)

    check_options(params.execution.options(), resolve_device(params.device), model)
    methods = {name: method_params(name, cfg or {}) for name, cfg in params.methods.items()}
    check_spaces(params.tune, params.methods)
    if tuned:
        for name, cfg in params.methods.items():
            methods[name] = _with_tuned(name, cfg or {}, methods[name])
    for name, method in methods.items():
        if hasattr(method, "targets"):
            method.targets(model, name)  # a layer name the model does not have is refused
        _check_levels(params.levels, name, method)
        _check_seeds(params.seeds, name, method)
        _check_progressive(name, method)
        merge_phase(params.retrain, method.retrain.model_dump(), prefix=f"methods.{name}.retrain.")
        check_budget(params, name, method, n_train)
    return params, methods


def check_data(data: DataParams) -> int:
    """``val_size`` against the data set's training set; return the training samples a run
    sees (after the validation split and ``limit``)."""
    _check_augment(data)
    if data.dataset == SYNTHETIC:
        return data.limit or 256  # the synthetic training set (`pipeline.prepare`)
    if data.dataset in FOLDER_DATASETS:
        pool = _check_folder(data)
    elif data.dataset in DATASETS:
        pool = get_spec(data.dataset).train_size
    else:
        return 0  # refused by its own rule
    if data.val_size >= pool:
        raise UsageError(f"data.val_size: {data.val_size} is not allowed; {data.dataset} has "
                         f"{pool} training samples; allowed: 1 .. {pool - 1}")
    return min(pool - data.val_size, data.limit or pool)


def _check_folder(data: DataParams) -> int:
    """An image folder's sizes and layout: its training images (ImageNet-1k's when an
    ``imagenet`` folder is not here yet: the suite can be checked before the data arrive)."""
    if data.crop > data.resize:
        raise UsageError(f"data.crop: {data.crop} is larger than data.resize {data.resize}; "
                         "allowed: crop <= resize (the centre crop is taken from the resized "
                         "image)")
    if data.augment != "none":
        raise UsageError(f"data.augment: {data.augment!r} is not allowed for data.dataset "
                         f"{data.dataset}; allowed: none (an image folder is augmented as it "
                         "is decoded: data.crop, data.crop_scale)")
    if data.dir is None:
        raise UsageError(f"data.dir: null is not allowed for data.dataset {data.dataset}; "
                         "allowed: the folder holding train/ and val/")
    if data.dataset == "imagenet" and not Path(data.dir).expanduser().exists():
        return IMAGENET_TRAIN_SIZE
    return len(scan(data.dataset, Path(data.dir)).train)


def _check_augment(data: DataParams) -> None:
    """``crop_flip`` needs images of `CROP_FLIP_SHAPE` (an unknown data set is refused later,
    by its own rule)."""
    if data.augment == "none":
        return
    if data.dataset == SYNTHETIC:
        shape = tuple(data.synthetic_shape)
    elif data.dataset in DATASETS:
        shape = tuple(DATASETS[data.dataset].shape)
    else:
        return
    if shape != CROP_FLIP_SHAPE:
        need = "x".join(map(str, CROP_FLIP_SHAPE))
        raise UsageError(f"data.augment: {data.augment!r} is not allowed for data.dataset "
                         f"{data.dataset} (images {'x'.join(map(str, shape))}); allowed: none, "
                         f"or a data set of {need} images (cifar10)")


def _check_seeds(seeds: list[int], key: str, method: Any) -> None:
    """A method's own ``seeds``: distinct members of the suite's ``seeds``."""
    if method.seeds is None:
        return
    allowed = ", ".join(map(str, seeds))
    for seed in method.seeds:
        if seed not in seeds:
            raise UsageError(f"methods.{key}.seeds: {seed} is not a seed of this suite; "
                             f"allowed: a subset of {allowed} (seeds)")
    if len(set(method.seeds)) != len(method.seeds):
        raise UsageError(f"methods.{key}.seeds: {method.seeds} repeats a seed; allowed: "
                         f"distinct seeds of {allowed} (seeds)")


def _check_progressive(key: str, method: Any) -> None:
    """A progressive series prunes further from its last level: a target-driven method that
    starts from a trained model."""
    if not method.progressive:
        return
    instance = build_method(key, method)
    if instance.kind() != "target" or not instance.from_pretrained:
        raise UsageError(f"methods.{key}.progressive: true is not allowed for {instance.name} "
                         "(its sparsity is not a target it is given, or it trains from scratch); "
                         "allowed: a target-driven method that starts from the pretrained model "
                         "(admm, admm_l1, sas_admm, magnitude, gmp, random)")


def _check_levels(levels: LevelsParams, key: str, method: Any) -> None:
    """A method's own ``levels`` must be a subset of the suite's; a per-layer rule needs
    per-layer scope."""
    suite = levels.compression or levels.sparsity or []
    initial = getattr(method, "initial_sparsity", 0.0)
    lowest = 1.0 - 1.0 / min(levels.ratios(method.levels))
    if initial > lowest:
        raise UsageError(f"methods.{key}.initial_sparsity: {initial:g} is not allowed; it is "
                         f"above the lowest level's sparsity {lowest:.4g}; allowed: 0 .. "
                         f"{lowest:.4g}")
    for value in method.levels or []:
        if not any(math.isclose(value, v, rel_tol=1e-9) for v in suite):
            raise UsageError(f"methods.{key}.levels: {value:g} is not a level of this suite; "
                             f"allowed: {', '.join(f'{v:g}' for v in suite)} "
                             f"(levels.{levels.unit})")
    if getattr(method, "scope", None) == "global":
        raise UsageError(f"methods.{key}.scope: 'global' is not allowed; the suite's level rule "
                         "is per layer with a classifier floor (sparsebench.levels); allowed: "
                         "layer")


def _with_tuned(key: str, cfg: dict[str, Any], handset: Any) -> Any:
    """``methods.<key>`` with ``tuned/<key>.yaml`` laid over it, when the file exists."""
    tuned = read_tuned(key)
    if tuned is None:
        return handset
    for name in tuned.params:
        check_param(f"{tuned_path(key)}: params.{name}", key, cfg, name)
    try:
        return method_params(key, overlay(cfg, tuned.params))
    except UsageError as exc:
        raise UsageError(f"{tuned_path(key)}: {exc}") from None


def _check_model_args(params: Params) -> nn.Module:
    """Build the model on the meta device (no memory, no time) and return it: ``model.name``
    and ``model.args``, ``model.exclude``, ``model.weights`` (and each method's
    ``layer_sparsity`` names, in `load_params`) are checked before anything runs."""
    import torch

    shape = {}
    if params.data.dataset == "synthetic":
        channels, *size = params.data.synthetic_shape
        shape = {"in_channels": channels, "image_size": size[0] if size else 1,
                 "num_classes": params.data.synthetic_classes}
    elif params.data.dataset in DATASETS:
        spec = DATASETS[params.data.dataset]
        shape = {"in_channels": spec.shape[0], "image_size": spec.shape[1],
                 "num_classes": spec.num_classes}
    with torch.device("meta"):
        model = build_model(params.model.name, exclude=params.model.exclude,
                            **{**shape, **params.model.args})
    if params.model.weights is not None:
        load_weights(model, params.model.weights, params.model.name)  # on meta: checked only
    return model


def check_method(key: str, methods: dict) -> None:
    """Refuse a ``--method`` that is not a key under ``methods`` in params, before any stage
    work, naming the closest key so a typo (``admn``) is fixed at once.

    Raises:
        UsageError: one line with the value, the closest key (if any) and the allowed keys.
    """
    if key in methods:
        return
    close = difflib.get_close_matches(key, list(methods), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UsageError(f"--method: unknown method key {key!r}; {hint}allowed: "
                     f"{', '.join(methods)}")
