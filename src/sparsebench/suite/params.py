"""The params.yaml schema: the sections every suite shares (data, model, levels, execution,
evaluate, tracking, ...) and `Params`, the whole file.

Each method's section is checked by the method's own parameter model (`sparsebench.methods`),
the ``tune`` section by `sparsebench.suite.space`; the rules that need the registries or the
data set are checked by `sparsebench.suite.load.load_params`, which every stage and
``sparsebench check-params`` run before any output is touched. An error is one line naming the
key, the value and what is allowed.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from sparsebench.core.accelerate import Options
from sparsebench.core.schema import PhaseParams, Strict
from sparsebench.suite.space import TuneParams
from sparsebench.util.errors import UsageError

#: a name that becomes a path (``runs/<method key>/``, the suite's experiment): letters,
#: digits, ``_`` and ``-``, starting with a letter or a digit, at most 64 characters
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


SAFE_NAME_RULE = ("letters, digits, _ and -, starting with a letter or digit, at most 64 "
                  "characters (it becomes a directory name)")


def check_name(key: str, value: str) -> str:
    """``value`` if it is a safe path component, else a one-line `UsageError` naming ``key``."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        what = "the key" if key == "methods" else "the value"
        raise UsageError(f"{key}: {what} {value!r} is not allowed; allowed: {SAFE_NAME_RULE}")
    return value


class DataParams(Strict):
    """The data set and its splits. ``augment`` is applied to training batches only
    (`sparsebench.data.augment`): ``none``, or ``crop_flip`` (4-pixel pad, random 32x32 crop,
    horizontal flip; for 3x32x32 images, the SAS-ADMM authors' CIFAR-10 training). An image
    folder (``imagefolder``, ``imagenet``: `sparsebench.data.folders`) is read from ``dir`` and
    streamed, with its own augmentation (``crop``, ``resize``, ``crop_scale``)."""

    dataset: str = "mnist"
    dir: str | None = None
    val_size: int = Field(5000, gt=0)
    split_seed: int = 0
    limit: int | None = Field(None, gt=0)
    # dataset: synthetic only (tests and smoke runs of the GPU suites): image shape and classes
    synthetic_shape: tuple[Annotated[int, Field(gt=0)], ...] = (1, 8, 8)
    synthetic_classes: int = Field(4, ge=2)
    augment: Literal["none", "crop_flip"] = "none"
    # dataset: imagefolder or imagenet (`sparsebench.data.stream`): streamed from ``dir``
    loader_workers: int = Field(2, ge=0)  # DataLoader processes per run (0: in the run's own)
    crop: int = Field(224, gt=0)  # the square side the model sees (RandomResizedCrop, CenterCrop)
    resize: int = Field(256, gt=0)  # evaluation images' shorter side before the centre crop
    crop_scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] \
        = (0.08, 1.0)  # RandomResizedCrop's area range


class ModelParams(Strict):
    """The architecture (`sparsebench.core.models.build_model`), shaped for the data
    (``in_channels``, ``image_size``, ``num_classes``) and built with ``args``.

    ``name``: a zoo model (``mlp``, ``lenet5``, ``convnet``, ``resnet20`` ...), a torchvision
    classification model ``torchvision:<name>`` (``weights=None``: nothing is downloaded), or a
    builder of your own, ``<module>:<callable>`` (a module importable from the suite's
    directory or sys.path) or ``<file>.py:<callable>`` (a path relative to the suite's
    directory); see `sparsebench.core.external`. The builder's source file keys every run and
    pretrain, as the data file does: editing it retrains.

    ``exclude``: layers (Linear/Conv names, or a module holding some) a paper keeps dense, e.g.
    the first conv and the classifier. They are not prunable at all
    (`sparsebench.core.metrics.prunable_modules`): no method masks them or regularises them
    (but gRDA with ``scope: all``, which regularises every parameter), and the level (a
    compression over the prunable weights) and the sparsity figures are over the other layers;
    ``compression_all`` counts them as dense parameters, the FLOPs as dense layers. A
    ``layer_sparsity`` of 0 in a method is another thing: that layer stays prunable and counts
    in the level, as a relative keep ratio the per-layer rule scales with the others
    (`sparsebench.core.levels`). ``levels.classifier_density`` is the floor of the classifier
    (the last Linear/Conv layer); an excluded classifier stays dense and the floor applies to
    no layer.

    ``weights``: a local file, relative to the suite's directory (a torch state_dict
    ``.pt``/``.pth``, read with ``weights_only``, or ``.safetensors``), loaded into the model
    after it is built: it replaces the initialisation wherever the model is built, so the
    pretrain stage starts from it (and so do the methods that train from their own
    initialisation). It must fit the model as built, classifier included; its bytes key every
    run and pretrain.
    """

    name: str = "mlp"
    args: dict[str, Any] = Field(default_factory=dict)
    exclude: list[str] = Field(default_factory=list)
    weights: str | None = None

    def keyed(self) -> dict[str, Any]:
        """The section as a cache key: ``exclude`` and ``weights`` only when set, so the
        pretrained models of a suite without them keep their key."""
        unset = {k for k in ("exclude", "weights") if not getattr(self, k)}
        return self.model_dump(mode="json", exclude=unset)


class EvaluateParams(Strict):
    """What evaluate measures beyond the test metrics: CPU latency, dense against sparse."""

    latency_batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(  # [] turns latency off
        default_factory=lambda: [1, 256])
    latency_repeats: int = Field(50, gt=0)


#: the forms of the MLflow 3 tracking URIs a run can be logged to (a database's scheme may
#: name its driver: ``postgresql+psycopg2://``); a path or a ``file:`` URI is MLflow's file
#: store, which MLflow 3 refuses
TRACKING_URI_FORMS = (r"sqlite(\+\w+)?:///\S+", r"https?://[^\s/?#]+(/\S*)?",
                      r"(postgresql|mysql|mssql)(\+\w+)?://\S+", r"databricks(://[^\s/]+)?")
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
TRACKING_URI_RULE = ("null (SQLite under mlruns/), sqlite:///<file>, http(s)://<host>[:<port>], "
                     "postgresql://, mysql:// or mssql://<user>@<host>/<database>, or databricks")


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow 3 cannot keep runs at ``uri`` (judged by its form), or None when it can."""
    if any(re.fullmatch(form, uri, flags=re.IGNORECASE) for form in TRACKING_URI_FORMS):
        return None
    if not uri.strip():
        return "it is empty (null selects the default store)"
    if uri != uri.strip():
        return "it has leading or trailing spaces"
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", uri)  # one letter: a Windows drive
    scheme = match.group(1).lower() if match else ""
    if scheme in ("", "file"):
        return "a path or file: URI is the file store, which MLflow 3 refuses"
    if scheme.split("+")[0] not in TRACKING_SCHEMES:
        return f"the scheme {scheme}: has no MLflow tracking store"
    return f"it is not a complete {scheme}: URI"


class TrackingParams(Strict):
    """Where MLflow logs the stages' runs (`sparsebench.tracking.runs`): ``uri`` null is SQLite
    under ``<repo>/mlruns/`` (or ``$MLFLOW_TRACKING_URI`` when set); ``enabled: false`` logs
    nothing. A ``uri`` MLflow 3 cannot track to is refused here, before any stage starts."""

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None

    @field_validator("uri")
    @classmethod
    def _trackable(cls, uri: str | None) -> str | None:
        problem = None if uri is None else tracking_uri_problem(uri)
        if problem:
            raise ValueError(f"{problem}; allowed: {TRACKING_URI_RULE}")
        return uri


Compression = Annotated[float, Field(gt=1, allow_inf_nan=False)]


Sparsity = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


class LevelsParams(Strict):
    """The suite's operating points (`sparsebench.core.levels`): compression ratios over all
    prunable weights, or target sparsities (one of the two), strictly increasing; the
    classifier floor of the per-layer rule; the tolerance a calibrated point must meet
    (relative, on the compression ratio)."""

    compression: list[Compression] | None = None
    sparsity: list[Sparsity] | None = None
    classifier_density: float = Field(0.1, ge=0, lt=1)
    tolerance: float = Field(0.02, gt=0, lt=1)

    @field_validator("compression", "sparsity")
    @classmethod
    def _increasing(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and not values:
            raise ValueError("the list is empty; allowed: one level or more")
        if values is not None and any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError("the levels must be strictly increasing")
        return values

    @model_validator(mode="after")
    def _one_unit(self) -> LevelsParams:
        if (self.compression is None) == (self.sparsity is None):
            raise ValueError("give the levels as compression or as sparsity (exactly one)")
        return self

    @property
    def unit(self) -> str:
        return "compression" if self.compression is not None else "sparsity"

    def ratios(self, subset: list[float] | None = None) -> list[float]:
        """The compression ratios of the levels (of ``subset``, in the suite's unit)."""
        values = subset if subset is not None else (self.compression or self.sparsity or [])
        return [v if self.unit == "compression" else 1.0 / (1.0 - v) for v in values]


class ExecutionParams(Strict):
    """How a stage runs its independent runs: ``threads`` torch threads per run (fixed here, so
    results do not depend on the machine's core count), ``workers`` runs side by side (null:
    cores // threads on the CPU, visible GPUs x ``runs_per_gpu`` on CUDA), on the ``backend``
    ``local`` (a forked pool) or ``ray`` (the cluster at ``address``: ``auto``, ``local``,
    ``host:port`` or ``ray://host:port``; its size decides the workers). ``deterministic``:
    PyTorch's deterministic algorithms, so a GPU run's weights do not depend on which GPU
    ran it or what ran beside it (`sparsebench.pipeline.executor`)."""

    threads: int = Field(1, ge=1)
    workers: int | None = Field(None, ge=1)
    runs_per_gpu: int = Field(1, ge=1)
    backend: Literal["local", "ray"] = "local"
    address: str = "auto"
    deterministic: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (core.accelerate)
    channels_last: bool = False  # NHWC weights and batches (convolutional models only)
    compile: bool = False  # train through torch.compile(model)

    def options(self) -> Options:
        """The training options (`sparsebench.core.accelerate`)."""

        return Options(self.precision, self.channels_last, self.compile)


class Params(Strict):
    """The whole file. Rules that need the registries or the data set's size (names, model
    arguments, ``val_size``, the device, each method's levels, retrain override and budget)
    are checked by `sparsebench.suite.load.load_params` after this model."""

    suite: str = "default"
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    device: str = "auto"
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    pretrain: PhaseParams
    retrain: PhaseParams
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    levels: LevelsParams
    budget: int | None = Field(None, ge=1)  # epochs per run: pretrain share + prune + retrain
    execution: ExecutionParams = ExecutionParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    tune: TuneParams = TuneParams()

    @field_validator("seeds")
    @classmethod
    def _unique(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds
