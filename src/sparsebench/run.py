"""One run, one function: a (method, level, seed) from its spec to its result.

The protocol of the benchmark lives here, and the stages, the tuner, the calibration and the
benchmarks all call it (as lightning-hydra-template's ``train(cfg)``): seed, model (the suite's
pretrained one, or a fresh initialisation for methods that train from their own), the method's
prune phase at its level, the masked retrain with the method's overrides, then the figures. It
knows nothing of DVC, Optuna or MLflow: curves go to a callback.

`run` trains on the training split and reports on the validation split; `execute` adds the test
split's figures, the compressed checkpoint and the run's files (the pipeline's form of a run).
A run with a work directory is resumable: each phase checkpoints every epoch, and a finished
prune phase is kept, so a killed run continues where it stopped, with the numbers of a run never
interrupted.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from torch import nn

from sparsebench.checkpoint import information_bound, load_model, save, save_model
from sparsebench.core import distributed
from sparsebench.core.checkpoints import EpochCheckpoint
from sparsebench.core.external import load_weights, model_files
from sparsebench.core.latency import compare_latency
from sparsebench.core.metrics import evaluate_model_metrics, sparsity_summary
from sparsebench.core.models import build_model
from sparsebench.core.numerics import arithmetic_digest, flush_enabled
from sparsebench.core.schema import PhaseParams
from sparsebench.core.sparsity import apply_masks, get_masks, load_masks, make_permanent, save_masks
from sparsebench.core.train import evaluate, seed_everything
from sparsebench.data.augment import Augment
from sparsebench.data.stream import Split, size_of
from sparsebench.methods import Context, MethodParams, build_method
from sparsebench.methods.retrain import masked_retrain
from sparsebench.util.errors import Diverged, UsageError
from sparsebench.util.flatten import flatten
from sparsebench.util.paths import atomic_dir, atomic_write

MODEL, MASKS, CURVES = "model.safetensors", "masks.safetensors", "curves.json"
CHECKPOINT = "model.sparse.safetensors"  # the compressed sparse checkpoint (sparsebench.checkpoint)
RESULT = "result.json"
TRAJECTORY = "trajectory.json"  # a shared prune phase's record (`shared_prune`)


@dataclass(frozen=True)
class ModelSpec:
    """The suite's architecture, shaped for its data.

    ``model`` in params.yaml (`sparsebench.suite.params.ModelParams`).

    Attributes:
        name: The architecture: a key of the model registry, ``torchvision:<name>`` or
            ``<module>:<callable>`` (`sparsebench.core.models.build_model`).
        args: The builder's own arguments.
        in_channels: Image channels of the data.
        image_size: Image side length of the data.
        num_classes: Number of classes of the data.
        exclude: The layers kept dense (not prunable).
        weights: A local file of weights that replace the initialisation; None: none.
    """
    name: str
    args: dict[str, Any]
    in_channels: int
    image_size: int
    num_classes: int
    exclude: tuple[str, ...] = ()
    weights: str | None = None

    def build(self) -> nn.Module:
        """A freshly initialised model (with ``weights`` loaded when set).

        Returns:
            The model, carrying ``model.arch``.
        """
        model = build_model(self.name, exclude=self.exclude, in_channels=self.in_channels,
                            image_size=self.image_size, num_classes=self.num_classes,
                            **self.args)
        if self.weights is not None:
            load_weights(model, self.weights, self.name)
        return model

    def config(self) -> dict[str, Any]:
        """What a run is keyed by.

        The weights' bytes and the builder's source are input files (`files`), not part of
        it; ``exclude`` and ``weights`` appear only when set.

        Returns:
            The JSON-able fields.
        """
        return {"name": self.name, "args": self.args, "in_channels": self.in_channels,
                "image_size": self.image_size, "num_classes": self.num_classes,
                **({"exclude": list(self.exclude)} if self.exclude else {}),
                **({"weights": self.weights} if self.weights is not None else {})}

    def files(self) -> list[Path]:
        """The input files of the model: its builder's source and its weights.

        Returns:
            The files (`sparsebench.core.external.model_files`); empty for a registry or
            torchvision model without ``weights``.
        """
        return model_files(self.name, self.weights)


@dataclass
class RunSpec:
    """Everything one run depends on.

    Attributes:
        key: The entry under ``methods:``.
        method: Its parameters at this level (target or calibrated strength applied).
        level: The nominal compression ratio; None for dense.
        seed: The run's seed (initialisation, batch order, random masks).
        retrain: The masked retrain phase (shared section with the method's overrides).
        model: The architecture.
        pretrained: The directory of the dense model this run starts from (`save_run_model`);
            None to start from a fresh init.
        point: Which measured point of the level this is ("" for the level itself, or the
            "low" / "high" bracket of an interpolated level).
        augment: The training batches' augmentation (``data.augment``; None: none).
        shared_prune: The directory of this seed's prune trajectory (`shared_prune`) when the
            method's prune phase is shared across levels; the run then finishes it at its level
            instead of training it. Not part of `config`: a run is the same either way.
    """
    key: str
    method: MethodParams
    level: float | None
    seed: int
    retrain: PhaseParams
    model: ModelSpec
    pretrained: Path | None = None
    point: str = ""
    augment: Augment | None = None
    shared_prune: Path | None = None

    def config(self) -> dict[str, Any]:
        """The resolved configuration: what a cached run is keyed by.

        Returns:
            The JSON-able configuration (``shared_prune`` and ``pretrained`` left out).
        """
        return {"key": self.key, "method": self.method.model_dump(mode="json"),
                "level": self.level, "seed": self.seed, "point": self.point,
                "retrain": self.retrain.model_dump(mode="json"),
                "model": self.model.config(),
                **({} if self.augment is None else {"augment": asdict(self.augment)})}


@dataclass
class Outcome:
    """What `run` returns: the model with its masks applied, curves and seconds per phase.

    Attributes:
        model: The trained model, its masks applied.
        curves: Phase (``prune``, ``retrain``) -> its rows of figures, one per epoch (or
            iteration).
        seconds: Wall seconds per phase (``prune``, ``retrain``), and ``shared``: the epoch
            seconds of a prune trajectory trained once for every level and counted in
            `train_seconds`, as the run's own cost.
    """
    model: nn.Module
    curves: dict[str, list[dict]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per phase

    @property
    def train_seconds(self) -> float:
        """The epochs' own seconds (training steps, without the per-epoch validation).

        Returns:
            The sum of the ``seconds`` of every row of `curves`.
        """
        return sum(row.get("seconds", 0.0) for rows in self.curves.values() for row in rows)


def load_run_model(path: Path, device: torch.device, *, masked: bool = True) -> nn.Module:
    """The model written under ``path`` by `save_run_model`.

    Args:
        path: The directory holding ``model.safetensors`` (and ``masks.safetensors``).
        device: Where to put the model.
        masked: Apply the saved masks, where there are any.

    Returns:
        The model.

    Raises:
        sparsebench.util.errors.UsageError: If there is no model file under ``path``.
    """
    if not (path / MODEL).exists():
        raise UsageError(f"input: {str(path / MODEL)!r} does not exist; run the stage before "
                         "this one first (dvc repro)")
    model, _ = load_model(path / MODEL, device, trust_code=True)  # the pipeline's own file
    if masked and (path / MASKS).exists():
        apply_masks(model, load_masks(path / MASKS))
    return model


def save_run_model(path: Path, model: nn.Module, curves: list[dict] | dict) -> None:
    """Write a model (masks folded in), its masks and curves into the directory ``path``.

    Args:
        path: The directory, created if missing.
        model: The model; its masks are folded in (``make_permanent``), so it changes.
        curves: The curves, written as JSON.
    """
    path.mkdir(parents=True, exist_ok=True)
    save_masks(get_masks(model), path / MASKS)
    make_permanent(model)
    save_model(model, path / MODEL)
    (path / CURVES).write_text(json.dumps(curves, indent=1))


@contextmanager
def diverged(where: str, hyper: dict[str, BaseModel]):
    """A context in which a NaN or infinite loss becomes one line (`Diverged`).

    Args:
        where: What diverged (stage, method, seed), at the start of the line.
        hyper: Section name -> its parameters, listed in the line (their ``retrain``,
            ``method`` and ``levels`` left out).

    Raises:
        sparsebench.util.errors.Diverged: For a ``FloatingPointError`` in the block, naming
            where, the epoch and the hyperparameters.
    """
    try:
        yield
    except FloatingPointError as exc:
        dumped = {k: v.model_dump(exclude={"retrain", "method", "levels"})
                  for k, v in hyper.items()}
        values = ", ".join(f"{k}={v}" for k, v in flatten("", dumped).items())
        raise Diverged(f"{where}: diverged ({exc}); hyperparameters: {values}; lower the "
                       "learning rate or change them") from None


def _context(spec: RunSpec, data: dict, device: torch.device, checkpoint: EpochCheckpoint | None,
             on_epoch: Callable[[dict], None] | None) -> Context:
    return Context(train=data["train"], val=data["val"], device=device,
                   generator=seed_everything(spec.seed), seed=spec.seed, progress=False,
                   on_epoch=on_epoch, checkpoint=checkpoint, augment=spec.augment)


def _phase_hook(phase: str, on_epoch: Callable[[str, dict], None] | None):
    return None if on_epoch is None else (lambda row: on_epoch(phase, row))


def run(spec: RunSpec, data: dict[str, Split],
        device: torch.device, *, work: Path | None = None,
        on_epoch: Callable[[str, dict], None] | None = None) -> Outcome:
    """Prune and retrain one (method, level, seed) on the training split.

    Args:
        spec: The run.
        data: The ``train`` and ``val`` splits (the test split is never needed here).
        device: Where to train.
        work: A directory for the run's resume state (created; None: not resumable).
        on_epoch: Called with (phase, row) after every epoch (or ADMM iteration).

    Returns:
        The trained model with its masks applied, the curves and seconds of both phases.

    Raises:
        sparsebench.util.errors.Diverged: For a NaN or infinite loss.
        sparsebench.util.errors.UsageError: For a method that starts from the pretrained
            model when ``spec.pretrained`` is None.

    Examples:
        gRDA from a fresh initialisation, then one epoch of masked retrain; the retrain keeps
        the sparsity the prune phase reached, and the same spec gives the same model:

        >>> import torch
        >>> from sparsebench.core.schema import PhaseParams
        >>> from sparsebench.methods import method_params
        >>> from sparsebench.run import ModelSpec, RunSpec, run
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))
        >>> spec = RunSpec(
        ...     key="grda", method=method_params("grda", {"c": 0.5, "epochs": 2,
        ...                                                "batch_size": 16}),
        ...     level=None, seed=0, retrain=PhaseParams(epochs=1, batch_size=16),
        ...     model=ModelSpec("mlp", {"widths": [32]}, in_channels=1, image_size=4,
        ...                     num_classes=3))
        >>> data = {"train": (x, y), "val": (x, y)}
        >>> outcome = run(spec, data, torch.device("cpu"))
        >>> {phase: len(rows) for phase, rows in outcome.curves.items()}
        {'prune': 2, 'retrain': 1}
        >>> outcome.curves["retrain"][-1]["sparsity"] == outcome.curves["prune"][-1]["sparsity"]
        True
        >>> again = run(spec, data, torch.device("cpu"))
        >>> torch.equal(again.model.layers[1].weight, outcome.model.layers[1].weight)
        True
    """
    pruned = work / "prune" if work is not None else None
    outcome = Outcome(model=nn.Identity())
    if pruned is not None and (pruned / CURVES).exists():  # finished before a kill
        model = _pruned_before(pruned, device, outcome)
    else:
        start = time.perf_counter()
        model, shared = _prune(spec, data, device, work, on_epoch, outcome)
        outcome.seconds["prune"] = time.perf_counter() - start
        if shared is not None:  # the trajectory's epoch seconds, copied (`shared_prune`)
            outcome.seconds["shared"] = shared
        if pruned is not None:
            model = _keep_pruned(pruned, model, outcome, device)
    start = time.perf_counter()
    ctx = _context(spec, data, device, _checkpoint(work, "retrain"),
                   _phase_hook("retrain", on_epoch))
    with diverged(f"retrain {spec.key} seed {spec.seed}", {"retrain.optimizer":
                                                           spec.retrain.optimizer}):
        outcome.curves["retrain"] = masked_retrain(
            model, spec.retrain.to_phase(f"{spec.key} retrain"), ctx)
    outcome.seconds["retrain"] = time.perf_counter() - start
    outcome.model = model
    return outcome


def _prune(spec: RunSpec, data: dict, device: torch.device, work: Path | None,
           on_epoch: Callable[[str, dict], None] | None,
           outcome: Outcome) -> tuple[nn.Module, float | None]:
    """The prune phase: the seed's shared trajectory finished at this level (with its epoch
    seconds), or the method's prune phase trained here (None)."""
    method = build_method(spec.key, spec.method)
    if spec.shared_prune is not None:
        model = load_run_model(spec.shared_prune, device, masked=False)
        method.finish(model)
        rows = json.loads((spec.shared_prune / CURVES).read_text())["prune"]
        outcome.curves["prune"] = rows
        return model, sum(row.get("seconds", 0.0) for row in rows)
    if method.from_pretrained:
        if spec.pretrained is None:
            raise UsageError(f"methods.{spec.key}: starts from the pretrained model, "
                             "and none was given")
        model = load_run_model(spec.pretrained, device, masked=False)
    else:
        seed_everything(spec.seed)
        model = spec.model.build().to(device)
    ctx = _context(spec, data, device, _checkpoint(work, "prune"), _phase_hook("prune", on_epoch))
    with diverged(f"prune {spec.key} seed {spec.seed}", {f"methods.{spec.key}": spec.method}):
        outcome.curves["prune"] = method.prune(model, ctx)
    return model, None


def _pruned_before(pruned: Path, device: torch.device, outcome: Outcome) -> nn.Module:
    """The prune phase a killed run finished, with its curves and seconds."""
    model = load_run_model(pruned, device)
    saved = json.loads((pruned / CURVES).read_text())
    outcome.curves["prune"], outcome.seconds["prune"] = saved["rows"], saved["wall"]
    if "shared" in saved:
        outcome.seconds["shared"] = saved["shared"]
    return model


def _keep_pruned(pruned: Path, model: nn.Module, outcome: Outcome,
                 device: torch.device) -> nn.Module:
    """Save the finished prune phase whole (rank 0) and go on from the saved model, as a
    resumed run does."""
    def keep() -> None:
        shared = outcome.seconds.get("shared")
        with atomic_dir(pruned) as tmp:
            save_run_model(tmp, model, {"rows": outcome.curves["prune"],
                                        "wall": outcome.seconds["prune"],
                                        **({"shared": shared} if shared is not None else {})})
        (pruned.parent / "prune.resume.pt").unlink(missing_ok=True)

    distributed.rank0_first(keep)
    return load_run_model(pruned, device)


def shared_prune(spec: RunSpec, data: dict[str, Split],
                 device: torch.device, out: Path, *, fingerprint: str,
                 on_epoch: Callable[[str, dict], None] | None = None) -> dict[str, Any]:
    """Train the prune trajectory of ``spec``'s method and seed once, for all its levels.

    For a method whose level enters only its final masks (`Method.shares_prune`: admm_l1,
    SAS-ADMM), the prune phase up to them is the same at every level, epoch for epoch (tested
    in tests/methods/test_level_free_prune.py). It is trained here from the pretrained model,
    with the run's seed, and ``out`` receives the model it leaves (unmasked), its curves and
    ``trajectory.json`` (seconds, fingerprint); each level's run then loads it and applies its
    own masks (`run` with ``spec.shared_prune``), with the weights of a run that trained it
    itself, bit for bit. Resumable as a run's prune phase (state in ``.<name>.work``).

    Args:
        spec: The run of any one level (its level is not read).
        data: The ``train`` and ``val`` splits.
        device: Where to train.
        out: The directory to write, whole (rank 0 under torchrun).
        fingerprint: The trajectory's fingerprint, kept in ``trajectory.json`` (`cached`).
        on_epoch: Called with (``prune``, row) after every epoch (or iteration).

    Returns:
        The record of ``trajectory.json``: key, seed, epochs, seconds and fingerprint.

    Raises:
        sparsebench.util.errors.UsageError: If ``spec.pretrained`` is None.
        sparsebench.util.errors.Diverged: For a NaN or infinite loss.
    """
    method = build_method(spec.key, spec.method)
    if spec.pretrained is None:
        raise UsageError(f"methods.{spec.key}: starts from the pretrained model, and none "
                         "was given")
    work = out.with_name(f".{out.name}.work")
    start = time.perf_counter()
    model = load_run_model(spec.pretrained, device, masked=False)
    ctx = _context(spec, data, device, _checkpoint(work, "prune"), _phase_hook("prune", on_epoch))
    with diverged(f"prune {spec.key} seed {spec.seed}", {f"methods.{spec.key}": spec.method}):
        curves = method.trajectory(model, ctx)
    wall = time.perf_counter() - start
    record = {"key": spec.key, "seed": spec.seed, "epochs": method.prune_epochs(
        size_of(data["train"])), "seconds": {"train": sum(r.get("seconds", 0.0) for r in curves),
                                            "prune": wall}, "fingerprint": fingerprint}

    def keep() -> dict[str, Any]:
        with atomic_dir(out) as tmp:
            save_model(model, tmp / MODEL)
            (tmp / CURVES).write_text(json.dumps({"prune": curves}, indent=1))
            atomic_write(tmp / TRAJECTORY, json.dumps(record, indent=1))
        shutil.rmtree(work, ignore_errors=True)
        return record

    return distributed.rank0_first(keep)


def _checkpoint(work: Path | None, phase: str) -> EpochCheckpoint | None:
    if work is None:
        return None
    work.mkdir(parents=True, exist_ok=True)
    return EpochCheckpoint(work / f"{phase}.resume.pt")


def validation_figures(model: nn.Module, val: Split,
                       device: torch.device) -> dict[str, float]:
    """Validation accuracy and loss, sparsity and compression of a run's model.

    The tuner's and the calibration's figures.

    Args:
        model: The model, its masks applied.
        val: The validation split.
        device: Where to evaluate.

    Returns:
        ``val_accuracy``, ``val_loss``, ``sparsity`` and ``compression``.
    """
    loss, acc = evaluate(model, val, device=device)
    summary = sparsity_summary(model)
    return {"val_accuracy": acc, "val_loss": loss, "sparsity": summary["sparsity"],
            "compression": summary["compression"]}


def environment(device: torch.device, threads: int, workers: int) -> dict[str, Any]:
    """What a speed figure needs to be read later, and what decides a run's arithmetic.

    The CPU (its model string and family/model/stepping from /proc/cpuinfo, the instruction
    set torch dispatches to), the torch build, the threads and
    `sparsebench.core.numerics.arithmetic_digest`.

    Args:
        device: The device the runs train on.
        threads: The torch threads per run.
        workers: The runs in parallel.

    Returns:
        The environment, JSON-able.
    """
    return {"torch": torch.__version__, "torch_git": torch.version.git_version,
            "cpu": _cpu_model(), "cpu_id": _cpu_id(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": threads,
            "workers": workers, "device": str(device), "flush_subnormals": flush_enabled(),
            "arithmetic": arithmetic_digest(threads), "python": platform.python_version()}


def _cpuinfo(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == key:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpu_id() -> str:
    """``family 23 model 49 stepping 0``: what tells apart two CPUs of one model string."""
    return " ".join(f"{key.split()[-1]} {_cpuinfo(key)}" for key in
                    ("cpu family", "model", "stepping") if _cpuinfo(key) is not None)


def execute(spec: RunSpec, data: dict[str, Split],
            device: torch.device, out: Path, *, fingerprint: str, budget: dict[str, int],
            shape: tuple[int, ...], env: dict[str, Any],
            on_epoch: Callable[[str, dict], None] | None = None,
            latency: tuple[tuple[int, ...], int] | None = None) -> dict[str, Any]:
    """`run`, then the test figures; write the run's directory ``out`` whole.

    ``out`` receives the model (masks folded in), the masks, the compressed checkpoint, the
    curves and ``result.json`` (a `RunResult`: figures, budget, seconds, environment,
    fingerprint). Its resume state lives in ``.<name>.work`` beside it and is deleted once
    ``out`` is in place.

    Args:
        spec: The run.
        data: The ``train``, ``val`` and ``test`` splits.
        device: Where to train.
        out: The run's directory, written whole (rank 0 under torchrun).
        fingerprint: The run's fingerprint, kept in ``result.json`` (`cached`).
        budget: The run's epoch budget, recorded as ``epochs``.
        shape: The input shape of one sample, for the FLOP figures.
        env: The `environment`, recorded.
        on_epoch: Called with (phase, row) after every epoch (or iteration).
        latency: (batch sizes, repeats) of the dense and sparse latency figures; None or no
            batch sizes: none.

    Returns:
        The run's record, as written to ``result.json``.

    Raises:
        sparsebench.util.errors.Diverged: For a NaN or infinite training loss.
        FloatingPointError: For a test loss that is not finite.
    """
    work = out.with_name(f".{out.name}.work")
    wall = time.perf_counter()
    outcome = run(spec, data, device, work=work, on_epoch=on_epoch)
    model = outcome.model

    def finish() -> dict[str, Any]:  # rank 0 alone under torchrun
        evaluating = time.perf_counter()
        test_loss, test_acc = evaluate(model, data["test"], device=device)
        figures = evaluate_model_metrics(model, shape)
        layers = figures.pop("layers")
        val = validation_figures(model, data["val"], device)
        with atomic_dir(out) as tmp:
            save_run_model(tmp, model, outcome.curves)
            save(model, tmp / CHECKPOINT)
            size, dense = (tmp / CHECKPOINT).stat().st_size, (tmp / MODEL).stat().st_size
            if latency is not None and latency[0]:
                figures.update(_latency_figures(model, shape, *latency))
            result = RunResult(
                key=spec.key, method=build_method(spec.key, spec.method).name,
                level=spec.level, point=spec.point, seed=spec.seed,
                figures={"test_accuracy": test_acc, "test_loss": test_loss,
                         "val_accuracy": val["val_accuracy"], **figures,
                         "checkpoint_bytes": size, "checkpoint_dense_bytes": dense,
                         "checkpoint_ratio": dense / size,
                         "checkpoint_bound_ratio": size / information_bound(model)},
                layers=layers, epochs=budget,
                seconds={"train": outcome.train_seconds, **outcome.seconds,
                         "evaluate": time.perf_counter() - evaluating,
                         "run": time.perf_counter() - wall},
                params=spec.method.model_dump(mode="json"), environment=env,
                fingerprint=fingerprint).record()
            if not math.isfinite(test_loss):
                raise FloatingPointError(f"{spec.key}: the test loss is {test_loss}")
            atomic_write(tmp / RESULT, json.dumps(result, indent=1))
        shutil.rmtree(work, ignore_errors=True)
        return result

    return distributed.rank0_first(finish)


def _latency_figures(model: nn.Module, shape: tuple[int, ...], batch_sizes: tuple[int, ...],
                     repeats: int) -> dict[str, float]:
    """Dense and sparse inference latency per batch size (`core.latency`), in ms."""
    timed = compare_latency(model.cpu(), shape, batch_sizes, repeats=repeats)
    figures = {}
    for batch, row in timed["batch"].items():
        figures[f"latency_b{batch}_dense_ms"] = 1000 * row["dense_s"]
        figures[f"latency_b{batch}_sparse_ms"] = 1000 * row["sparse_s"]
        figures[f"latency_b{batch}_ratio"] = row["ratio"]
    return figures


class Figures(BaseModel):
    """A run's final figures, under the one name each keeps from here to the report and MLflow.

    ``compression``, ``compression_all`` and ``flop_speedup`` are also read under the aliases
    ``compression_ratio``, ``compression_ratio_all`` and ``theoretical_speedup``; any further
    figure (a latency, a density per layer kind) is kept as it is.

    Attributes:
        test_accuracy: Accuracy on the test split.
        test_loss: Mean cross-entropy on the test split.
        val_accuracy: Accuracy on the validation split.
        sparsity: Zeros over the prunable weights.
        compression: Prunable weights over their nonzeros.
        compression_all: All parameters over their nonzeros.
        flop_speedup: FLOPs of one forward pass over those left with the zero weights skipped
            (`sparsebench.core.metrics.count_flops`).
        checkpoint_bytes: Size of the compressed checkpoint.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    test_accuracy: float
    test_loss: float
    val_accuracy: float
    sparsity: float
    compression: float = Field(validation_alias=AliasChoices("compression",
                                                             "compression_ratio"))
    compression_all: float = Field(validation_alias=AliasChoices("compression_all",
                                                                 "compression_ratio_all"))
    flop_speedup: float = Field(validation_alias=AliasChoices("flop_speedup",
                                                              "theoretical_speedup"))
    checkpoint_bytes: int


class RunResult(BaseModel):
    """A run's record, ``result.json``: what `execute` writes and every later stage reads.

    Read by `read_result`, the summaries' and the report's rows included.

    Attributes:
        key: The entry under ``methods:``.
        method: The registered method's name.
        level: The nominal compression ratio; None for dense.
        point: Which measured point of the level ("", "low" or "high").
        seed: The run's seed.
        figures: The final figures.
        layers: Per-layer figures (`sparsebench.core.metrics.evaluate_model_metrics`).
        epochs: The epoch budget of each phase.
        seconds: Seconds per phase, and of the whole run.
        params: The method's parameters.
        environment: The `environment` the run ran in.
        fingerprint: The run's fingerprint (`cached`); None: none.
    """

    model_config = ConfigDict(extra="allow")

    key: str
    method: str
    level: float | None
    point: str
    seed: int
    figures: Figures
    layers: dict[str, dict[str, Any]]
    epochs: dict[str, int]
    seconds: dict[str, float]
    params: dict[str, Any]
    environment: dict[str, Any]
    fingerprint: str | None = None

    def record(self) -> dict[str, Any]:
        """The record as JSON-ready data.

        Returns:
            The fields as plain data; floats as they are (an all-zero model's infinite
            compression stays ``Infinity``).
        """
        return self.model_dump(exclude_none=False)


def read_result(data: dict[str, Any]) -> dict[str, Any]:
    """A stored run record, checked, with its figures under the names of `Figures`.

    Args:
        data: A run record: ``result.json``, or a run of ``evaluation/<key>.json``.

    Returns:
        The record (`RunResult.record`).

    Raises:
        pydantic.ValidationError: For a record that lacks a field or has a wrong type.
    """
    return RunResult.model_validate(data).record()


def cached(out: Path, fingerprint: str, name: str = RESULT) -> dict[str, Any] | None:
    """The result of a finished run at ``out`` made from the same spec, inputs and code.

    Args:
        out: The run's directory.
        fingerprint: The fingerprint the result must carry.
        name: The record's file: `RESULT`, or `TRAJECTORY` for a shared prune trajectory.

    Returns:
        The record (a run's through `read_result`), or None if there is none, it cannot be
        read, or its fingerprint differs.
    """
    try:
        result = json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
    if result.get("fingerprint") != fingerprint:
        return None
    return result if name != RESULT else read_result(result)
