"""One trial: the method at the sampled parameters, judged on the validation split.

The protocol is the pipeline's for one seed: seed, model (the suite's pretrained one, or a fresh
initialisation for methods that train from their own), the method's prune phase, the shared
masked retrain with the method's overrides. Training reads the training split; every figure a
trial returns is on the validation split. The test split is never loaded while tuning.

Objectives:

- ``accuracy_at_sparsity``: the validation accuracy after retrain, with the constraint
  ``target_sparsity - sparsity <= 0`` (`optuna.trial.Trial.set_constraint`, which Optuna 5's
  samplers read and `Study.best_trial` respects); the validation accuracy of every epoch is
  reported, so the median pruner can stop a trial early.
- ``pareto``: (validation accuracy, sparsity), both maximised.

Each trial ends as a nested MLflow run under its study's run: its parameters, its per-epoch
curves, its final figures; FINISHED, KILLED (pruned) or FAILED (a NaN loss or a sampled
combination the method refuses).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from sparsebench.methods import build_method, method_class, method_params
from sparsebench.run import RunSpec, run, validation_figures
from sparsebench.suite.params import Params
from sparsebench.suite.plan import at_level, augment_of, layer_sizes, model_spec, retrain_phase
from sparsebench.suite.space import Range
from sparsebench.suite.tuned import overlay
from sparsebench.tracking.runs import log_run
from sparsebench.tuning.space import suggest
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import run_dir, seed_dir

DIRECTIONS = {"accuracy_at_sparsity": ["maximize"], "pareto": ["maximize", "maximize"]}
FAILURES = (FloatingPointError, UsageError)  # a trial fails on these; the study goes on
SPARSITY_TOLERANCE = 1e-4  # this close below the target still meets it (per-layer rounding)


@dataclass
class Setup:
    """What every trial of one study shares."""
    params: Params  # the suite, hand-set (without tuned/)
    key: str  # the method key under methods:
    cfg: dict[str, Any]  # methods.<key> as written in params.yaml
    space: dict[str, Range]
    objective: str
    target_sparsity: float
    seed: int
    study: str


def meets(sparsity: float, target: float) -> bool:
    return sparsity >= target - SPARSITY_TOLERANCE


def retried_trial(trial: Any) -> int | None:
    """The number of the trial this one retries (its worker died), or None."""
    return trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")


@dataclass
class TrialTracker:
    """Logs each trial as a run nested under the study's parent run."""
    uri: str
    experiment: str
    parent_run_id: str

    def log(self, setup: Setup, trial: Any, values: dict[str, Any], state: str,
            metrics: dict[str, float], curves: dict[str, list[dict]]) -> str:

        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
        retry_of = retried_trial(trial)
        tags = {"mlflow.parentRunId": self.parent_run_id, "optuna.study": setup.study,
                "optuna.trial": str(trial.number), "optuna.state": state,
                "method_key": setup.key, "method": method_class(setup.key, setup.cfg).name,
                "suite": setup.params.suite, "seed": str(setup.seed)}
        if retry_of is not None:
            tags["optuna.retry_of"] = str(retry_of)
        return log_run(self.uri, self.experiment, run_name=f"trial-{trial.number}", tags=tags,
                       params={**values, "trial": trial.number}, metrics=metrics,
                       curves=curves, status=status)


class Objective:
    """The function Optuna calls per trial (see the module docstring).

    Args:
        setup: the study's shared settings.
        data: the training and validation splits (never the test split).
        device: where to train.
        claim: released as soon as the trial exists (see `storage.Claim`).
        tracker: logs the trial to MLflow; None runs without tracking.
    """

    def __init__(self, setup: Setup, data: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 device: torch.device, claim: Any = None, tracker: TrialTracker | None = None):
        if set(data) != {"train", "val"}:
            raise ValueError(f"a trial sees the train and val splits only, got {sorted(data)}")
        self.setup, self.data, self.device = setup, data, device
        self.claim, self.tracker = claim, tracker

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna  # lazy: optuna takes about 2 s to import

        if self.claim is not None:
            self.claim.release()
        s = self.setup
        curves: dict[str, list[dict]] = {"prune": [], "retrain": []}
        values = suggest(trial, s.key, s.cfg, s.space)
        # Announced once the parameters are in the storage: a retry of this trial (its worker
        # died) then reruns these same parameters.
        trial.set_user_attr("worker_pid", os.getpid())
        start = time.perf_counter()
        try:
            figures = self._run(trial, values, curves)
        except optuna.TrialPruned:
            self._end(trial, values, "PRUNED", {}, curves, start)
            raise
        except FAILURES as exc:
            trial.set_user_attr("error", str(exc)[:500])
            self._end(trial, values, "FAIL", {}, curves, start)
            raise
        self._end(trial, values, "COMPLETE", figures, curves, start)
        if s.objective == "pareto":
            return figures["val_accuracy"], figures["sparsity"]
        violation = s.target_sparsity - figures["sparsity"]  # feasible when <= 0
        if meets(figures["sparsity"], s.target_sparsity):
            violation = min(violation, 0.0)
        trial.set_constraint("sparsity", violation)
        return figures["val_accuracy"]

    def _run(self, trial: Any, values: dict[str, Any],
             curves: dict[str, list[dict]]) -> dict[str, float]:
        """The suite's run protocol (`sparsebench.run.run`) at the study's level, on the
        training split; the figures are the validation split's."""
        s = self.setup
        sampled = method_params(s.key, overlay(s.cfg, values))
        spec_model = model_spec(s.params)
        level = 1.0 / (1.0 - s.target_sparsity)
        at = sampled
        if method_class(s.key, s.cfg).kind() == "target":
            [(_, at)] = at_level(s.params, s.key, sampled, level, layer_sizes(spec_model))
        pretrained = (seed_dir(run_dir("pretrain"), s.seed)
                      if build_method(s.key, at).from_pretrained else None)
        spec = RunSpec(s.key, at, level, s.seed, retrain_phase(s.params, at), spec_model,
                       pretrained, augment=augment_of(s.params))
        outcome = run(spec, self.data, self.device, on_epoch=self._on_epoch(trial, curves))
        figures = validation_figures(outcome.model, self.data["val"], self.device)
        figures.pop("compression")
        for name, value in figures.items():
            trial.set_user_attr(name, value)
        return figures

    def _on_epoch(self, trial: Any, curves: dict[str, list[dict]]):
        """Each epoch's row is kept, reported, and may prune the trial (single objective)."""
        import optuna  # lazy: optuna takes about 2 s to import

        single = self.setup.objective == "accuracy_at_sparsity"
        step = [0]

        def on_epoch(phase: str, row: dict) -> None:
            curves[phase].append(row)
            step[0] += 1
            if single:
                trial.report(row["val_accuracy"], step[0])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {step[0]}: val_accuracy "
                                             f"{row['val_accuracy']:.4f} below the median")

        return on_epoch

    def _end(self, trial: Any, values: dict[str, Any], state: str, figures: dict[str, float],
             curves: dict[str, list[dict]], start: float) -> None:
        seconds = time.perf_counter() - start
        trial.set_user_attr("seconds", seconds)  # the trial's compute: model, phases, evaluation
        if self.tracker is not None:
            run_id = self.tracker.log(self.setup, trial, values, state,
                                      {**figures, "seconds": seconds}, curves)
            trial.set_user_attr("mlflow_run_id", run_id)
        shown = " ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "val_loss")
        print(f"tune {self.setup.key} trial {trial.number}: {state} {shown} "
              f"({seconds:.1f}s)".replace("  ", " "), flush=True)
