"""The plan of a suite's runs: for each method its levels x seeds (x bracket points), each a
`sparsebench.run.RunSpec` with its directory and its epoch budget.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sparsebench.core.levels import layer_targets, level_name
from sparsebench.core.metrics import is_excluded, linear_conv_modules
from sparsebench.core.schema import PhaseParams, merge_phase
from sparsebench.data import dataset_info
from sparsebench.data.augment import Augment
from sparsebench.methods import MethodParams, build_method, method_class, method_params
from sparsebench.run import MODEL, ModelSpec, RunSpec
from sparsebench.suite.params import Params
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import run_dir, seed_dir

DATA_FILE = Path("data", "prepared", "splits.safetensors")
SHARED_PRUNE = "prune"  # runs/<key>/prune/seed<s>: a prune trajectory shared by the levels


def model_spec(params: Params, data_file: Path = DATA_FILE) -> ModelSpec:
    """The suite's model, shaped for its prepared data."""
    info = dataset_info(data_file)
    shape = info["shape"]
    return ModelSpec(params.model.name, dict(params.model.args), shape[0], shape[1],
                     info["num_classes"], tuple(params.model.exclude), params.model.weights)


def augment_of(params: Params, data_file: Path = DATA_FILE) -> Augment | None:
    """``data.augment`` for the prepared data (its padding: the normalised black pixel)."""
    info = dataset_info(data_file)
    return Augment.for_data(params.data.augment, info["mean"], info["std"])


def retrain_phase(params: Params, method: MethodParams) -> PhaseParams:
    """The shared ``retrain`` section with the method's own overrides applied."""
    return merge_phase(params.retrain, method.retrain.model_dump(), prefix="retrain.")


def levels_of(params: Params, key: str, method: MethodParams) -> list[float | None]:
    """The compression levels ``methods.<key>`` runs at (None: dense, which has none)."""
    if method_class(key, method.model_dump()).kind() == "reference":
        return [None]
    return params.levels.ratios(method.levels)


def layer_sizes(spec: ModelSpec) -> dict[str, int]:
    """The weight size of every Linear/Conv layer in model order, ``model.exclude``'s
    included (`at_level` leaves them out: it needs to know whether the last is the
    classifier)."""
    with torch.device("meta"):
        model = replace(spec, weights=None).build()
    return {name: m.weight.numel() for name, m in linear_conv_modules(model)}


def level_layers(params: Params, sizes: dict[str, int]) -> tuple[dict[str, int], float]:
    """The layers a level is spread over (``model.exclude`` left out) and the classifier floor
    (``levels.classifier_density``, or 0 when the classifier itself is excluded: it stays
    dense)."""
    exclude = params.model.exclude
    kept = {n: size for n, size in sizes.items() if not is_excluded(n, exclude)}
    classifier = list(sizes)[-1] if sizes else None
    floor = params.levels.classifier_density if classifier in kept else 0.0
    return kept, floor


def at_level(params: Params, key: str, method: MethodParams, level: float | None,
             sizes: dict[str, int], calibration: Any = None, seed: int = 0
             ) -> list[tuple[str, MethodParams]]:
    """The method's parameters at ``level`` (for ``seed``: a calibrated strength is the seed's
    own): [("", params)] for a level it is run at directly, [("low", ...), ("high", ...)] for
    a bracketed level, [] for a level it cannot reach."""
    cls = method_class(key, method.model_dump())
    if level is None:
        return [("", method)]
    raw = method.model_dump(exclude_none=True)
    if cls.kind() == "target":
        kept, floor = level_layers(params, sizes)
        profile = None
        if method.layer_sparsity:
            profile = {n: 1.0 - method.layer_sparsity.get(n, method.target_sparsity)
                       for n in kept}
        targets = layer_targets(kept, level, profile=profile, key="levels",
                                classifier_density=floor)
        raw.update(target_sparsity=1.0 - 1.0 / level, layer_sparsity=targets, scope="layer")
        return [("", method_params(key, raw))]
    if calibration is None:
        raise UsageError(f"calibrated/{key}.yaml: missing; methods.{key} is regularisation-"
                         f"driven and needs its {cls.strength} calibrated per level: run "
                         f"sparsebench calibrate --method {key}")
    return [(point, method_params(key, {**raw, cls.strength: value}))
            for point, value in calibration.points(level, seed)]


@dataclass
class Planned:
    """A run of the stage: its spec and where its directory goes; ``after``: the run of a
    progressive series whose result this one starts from (it must be finished first)."""
    spec: RunSpec
    out: Path
    budget: dict[str, int]
    after: Planned | None = None

    @property
    def name(self) -> str:
        return f"{self.spec.key} {self.out.parent.name} seed {self.spec.seed}" + (
            f" ({self.spec.point})" if self.spec.point else "")


def epoch_budget(params: Params, key: str, method: MethodParams, n_train: int) -> dict[str, int]:
    """Epochs each part of a run costs: pretrain share, prune, retrain, total."""
    instance = build_method(key, method)
    budget = {"pretrain": params.pretrain.epochs if instance.from_pretrained else 0,
              "prune": instance.prune_epochs(n_train),
              "retrain": retrain_phase(params, method).epochs}
    return {**budget, "total": sum(budget.values())}


def check_budget(params: Params, key: str, method: Any, n_train: int) -> None:
    """Refuse ``methods.<key>`` when a run of it (pretrain share + prune + retrain) is over
    ``budget``."""
    if params.budget is None:
        return
    budget = epoch_budget(params, key, method, n_train)
    if budget["total"] > params.budget:
        raise UsageError(
            f"methods.{key}: {budget['total']} epochs a run ({budget['pretrain']} pretrain + "
            f"{budget['prune']} prune + {budget['retrain']} retrain) is over the suite's "
            f"budget; allowed: at most budget: {params.budget}")


def plan(params: Params, methods: dict[str, MethodParams], key: str,
         calibration: Any = None, data_file: Path = DATA_FILE) -> list[Planned]:
    """Every run of ``methods.<key>``: its levels x its seeds (x bracket points); its seeds
    are the suite's, or the subset ``methods.<key>.seeds`` in the suite's order."""
    method = methods[key]
    spec_model = model_spec(params, data_file)
    sizes = layer_sizes(spec_model)
    n_train = dataset_info(data_file)["sizes"]["train"]
    retrain = retrain_phase(params, method)
    augment = augment_of(params, data_file)
    runs: list[Planned] = []
    last: dict[int, Planned] = {}  # a progressive series' previous step, per seed
    for level in levels_of(params, key, method):
        for seed in seeds_of(params, method):
            for point, at in at_level(params, key, method, level, sizes, calibration, seed):
                budget = epoch_budget(params, key, at, n_train)
                check_budget(params, key, at, n_train)
                pretrained = (seed_dir(run_dir("pretrain"), seed)
                              if build_method(key, at).from_pretrained else None)
                before = last.get(seed) if method.progressive else None
                steps = budget
                if before is not None:  # the previous step's model, and the series' epochs
                    pretrained = before.out
                    steps = series_budget(before.budget, budget)
                shared = (seed_dir(run_dir(key, SHARED_PRUNE), seed)
                          if level is not None and not method.progressive
                          and build_method(key, at).shares_prune() else None)
                spec = RunSpec(key, at, level, seed, retrain, spec_model, pretrained, point,
                               augment, shared)
                name = "dense" if level is None else level_name(level)
                leaf = seed_dir(run_dir(key, name), seed)
                out = leaf.with_name(f"{leaf.name}-{point}") if point else leaf
                runs.append(Planned(spec, out, steps, before))
                last[seed] = runs[-1]
    return runs


def seeds_of(params: Params, method: MethodParams) -> list[int]:
    """The seeds ``methods.<key>`` runs with: ``methods.<key>.seeds`` or the suite's."""
    return [s for s in params.seeds if method.seeds is None or s in method.seeds]


def series_budget(before: dict[str, int], step: dict[str, int]) -> dict[str, int]:
    """A progressive step's epochs: the pretrain share once, every earlier step's prune and
    retrain (``previous``), this step's; ``total`` is the series' up to this step."""
    previous = before.get("previous", 0) + before["prune"] + before["retrain"]
    budget = {"pretrain": before["pretrain"], "previous": previous, "prune": step["prune"],
              "retrain": step["retrain"]}
    return {**budget, "total": sum(budget.values())}


def pretrained_file(spec: RunSpec) -> list[Path]:
    return [] if spec.pretrained is None else [spec.pretrained / MODEL]


def input_files(spec: RunSpec) -> list[Path]:
    """The files a run's fingerprint covers: the prepared data, the model's own (a user's
    builder's source, ``model.weights``: `ModelSpec.files`) and the pretrained model."""
    return [DATA_FILE, *spec.model.files(), *pretrained_file(spec)]
