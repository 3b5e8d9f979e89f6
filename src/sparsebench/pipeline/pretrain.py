"""The ``pretrain`` stage: dense training from a seeded initialisation, one model per seed, side
by side; resumable (`pipeline.cache.StageWork`); each seed an MLflow run of its own, live.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsebench.core import distributed
from sparsebench.core.checkpoints import Resume
from sparsebench.core.external import model_files
from sparsebench.core.train import fit, seed_everything
from sparsebench.pipeline import profile
from sparsebench.pipeline.cache import StageWork, arithmetic, fingerprint
from sparsebench.pipeline.devices import placement_of, stage_device
from sparsebench.pipeline.executor import run_tasks
from sparsebench.pipeline.hooks import chain_hooks, live_epochs, log_epoch
from sparsebench.pipeline.tasks import Task, here, raise_failures, splits
from sparsebench.pipeline.tracker import StageTracker
from sparsebench.run import ModelSpec, diverged, environment, save_run_model
from sparsebench.suite.params import Params
from sparsebench.suite.plan import DATA_FILE, augment_of, model_spec
from sparsebench.tracking.runs import RUN_STATE, LiveRun, Records, RunInfo
from sparsebench.util.flatten import flatten
from sparsebench.util.paths import run_dir, seed_dir

if TYPE_CHECKING:
    import torch


def pretrain(params: Params) -> None:
    """Dense training from a seeded initialisation, one model per seed (side by side, on the
    stage's executor); resumable. Each seed is an MLflow run of its own, logged live."""
    device = stage_device(params)
    tracker = (StageTracker(params, "pretrain", "tags.run_kind = 'pretrain'")
               if params.tracking.enabled and distributed.writer() else None)
    placement = placement_of(params, tracked=tracker is not None)
    key = fingerprint(stage="pretrain", config=pretrain_config(params, placement.threads),
                      inputs=pretrain_inputs(params))
    if StageWork(run_dir("pretrain"), key).finished([f"seed{s}" for s in params.seeds]):
        print(f"pretrain: {len(params.seeds)} seeds cached", flush=True)
        return
    with StageWork(run_dir("pretrain"), key) as work:
        env = environment(device, placement.threads, placement.workers)
        seeds = _Seeds(params, work, device, env)
        infos = {s: seeds.info(tracker, s) if tracker is not None else None
                 for s in params.seeds}
        live = {s: info if info is not None and tracker.wants(info) else None
                for s, info in infos.items()}  # None: logged whole already
        tasks = [Task(f"pretrain seed {s}", lambda s=s, info=live[s]: seeds.train(s, info),
                      reads=tuple(pretrain_inputs(params)[1:]), writes=(work.dir / f"seed{s}",))
                 for s in params.seeds if not work.done(f"seed{s}")]
        if tasks and placement.backend == "local":
            splits("train", "val")  # loaded once here; the forked workers inherit it
        failures = run_tasks(tasks, placement)
        if tracker is not None:  # inside: a failure keeps the work directory for the rerun
            with profile.timed("tracking"):
                tracker.sync([(infos[s], pretrain_records(work.dir / f"seed{s}"),
                               f"pretrain seed {s}") for s in params.seeds
                              if work.done(f"seed{s}")])
        raise_failures("pretrain", failures, len(tasks))
        # not part of the stage's output; rank 0 alone (under torchrun it swaps the work
        # directory in as it leaves this block, while another rank may still be here)
        for state in work.dir.glob(f"*.{RUN_STATE}") if distributed.writer() else []:
            state.unlink()
    epochs = [row for s in params.seeds for row in json.loads(
        (seed_dir(run_dir("pretrain"), s) / "curves.json").read_text())]
    profile.record(train=sum(r["seconds"] for r in epochs), workers=placement.workers,
                   trained=len(tasks))


def pretrain_inputs(params: Params) -> list[Path]:
    """The files the pretrained models depend on: the prepared data, and the model's own (a
    user's builder's source, ``model.weights``: `core.external.model_files`)."""
    return [DATA_FILE, *model_files(params.model.name, params.model.weights)]


def pretrain_config(params: Params, threads: int) -> dict[str, Any]:
    """What the pretrained models depend on: the sections pretrain reads, the threads and
    the arithmetic (`cache.arithmetic`)."""
    shared = params.model_dump(include={"seeds", "device", "data", "pretrain"})
    return {**shared, "model": params.model.keyed(), "threads": threads, **arithmetic(params)}


class _Seeds:
    """The pretrain of each seed, in the worker that trains it (here, forked, or on a Ray
    node: it holds nothing that cannot travel), into the stage's work directory; its MLflow
    run's description for the tracker."""

    def __init__(self, params: Params, work: StageWork, device: torch.device,
                 env: dict[str, Any]):
        self.params, self.work, self.device, self.env = params, work, device, env
        self.phase = params.pretrain.to_phase("pretrain")
        self.spec: ModelSpec = model_spec(params)
        self.augment = augment_of(params, DATA_FILE)

    def info(self, tracker: StageTracker, seed: int) -> RunInfo:
        tags = {"method": "pretrain", "family": "dense", "level": "None", "seed": str(seed),
                "params_source": "default", "run_kind": "pretrain",
                "fingerprint": f"{self.work.fingerprint}-seed{seed}"}
        run_params = {**flatten("pretrain", self.params.pretrain.model_dump(mode="json")),
                      **flatten("model", self.params.model.keyed()),
                      **flatten("env", self.env), "seed": seed}
        return tracker.info(f"pretrain-seed{seed}", tags, run_params)

    def train(self, seed: int, info: RunInfo | None) -> None:
        device = here(self.device)
        generator = seed_everything(seed)
        model = self.spec.build().to(device)
        resume = Resume(self.work.checkpoint(f"seed{seed}"), "pretrain")
        live = (LiveRun(info, self.work.dir / f"seed{seed}.{RUN_STATE}", f"pretrain seed {seed}")
                if info is not None else None)
        optimizer = {"pretrain.optimizer": self.params.pretrain.optimizer}
        data = splits("train", "val")
        with live_epochs(live, self.work.dir) as on_epoch, diverged(
                f"pretrain seed {seed}", optimizer):
            hook = chain_hooks(log_epoch(f"seed {seed}"), on_epoch)
            curves = fit(model, data["train"], data["val"], self.phase,
                         generator=generator, device=device,
                         on_epoch=lambda row: hook("pretrain", row), resume=resume,
                         augment=self.augment)
            done = distributed.rank0_first(lambda: self.work.finish(
                f"seed{seed}", save_run_model, model, curves))
            if live is not None:
                live.finish(pretrain_records(done))


def pretrain_records(seed_out: Path) -> Any:
    """A finished pretrain seed's `tracking.Records`: its curve, the last epoch's figures and
    the training seconds, dated by its curves file."""
    curves = json.loads((seed_out / "curves.json").read_text())
    end = int((seed_out / "curves.json").stat().st_mtime * 1000)
    seconds = sum(r["seconds"] for r in curves)
    last = {k: v for k, v in curves[-1].items() if k not in ("epoch", "seconds", "lr")}
    return Records({"pretrain": curves}, {**last, "seconds_train": seconds}, [],
                   start_ms=end - int(1000 * seconds), end_ms=end)
