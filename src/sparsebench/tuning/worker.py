"""A worker: load the study, run trials until it has the requested number of finished ones.

`sparsebench tune --workers N` starts N of these (``python -m sparsebench.tuning.worker SPEC``)
after it has created the study and the MLflow store; on other machines, ``sparsebench tune``
with the same ``--storage`` and ``--study`` adds workers to the same study.

Exactly N: before each trial a worker takes the study's `Claim`, fails stale trials (heartbeat),
counts, and starts a trial only if one is waiting (a retry, or the hand-set trial) or fewer
than N are finished or running; the claim is released once the new trial is RUNNING. A worker
that finds every open slot held by running trials waits for them: one of them may still fail.
Finished means COMPLETE or PRUNED. A failed trial (NaN loss) frees its slot; a worker stops
after N failures of its own run, so a method that always diverges ends instead of looping.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from sparsebench.core.accelerate import configure
from sparsebench.core.train import resolve_device
from sparsebench.data import load_splits
from sparsebench.suite.load import load_params
from sparsebench.suite.plan import DATA_FILE
from sparsebench.tracking.runs import tracking_uri
from sparsebench.tuning.storage import Claim, open_storage
from sparsebench.tuning.trial import FAILURES, Objective, Setup, TrialTracker
from sparsebench.util.errors import UsageError

POLL_SECONDS = 0.5


@dataclass
class WorkerSpec:
    """Everything a worker process needs, passed as JSON on its command line."""
    params_path: str
    key: str
    study: str
    storage: str
    objective: str
    trials: int
    workers: int
    index: int
    parent_run_id: str | None  # the study's MLflow run; None without tracking


def counts(study: Any) -> Counter:
    """How many trials of ``study`` are in each state (by state name)."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def work(study: Any, objective: Any, trials: int, claim: Any,
         poll: float = POLL_SECONDS) -> str:
    """Run trials of ``study`` until ``trials`` are finished; return why it stopped."""
    import optuna  # lazy: optuna takes about 2 s to import

    failed_before = counts(study)["FAIL"]
    while True:
        claim.acquire()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            c = counts(study)
            finished = c["COMPLETE"] + c["PRUNED"]
            if finished >= trials:
                return "done"
            if c["FAIL"] - failed_before >= trials:
                return f"{c['FAIL'] - failed_before} trials failed"
            if c["WAITING"] or finished + c["RUNNING"] < trials:
                study.optimize(objective, n_trials=1, catch=FAILURES, gc_after_trial=False)
                continue
        finally:
            claim.release()
        time.sleep(poll)


def sampler_and_pruner(objective: str, tune: Any, seed: int):
    """TPE (multi-objective TPE for the Pareto front) and, for one objective, MedianPruner."""
    import optuna  # lazy: optuna takes about 2 s to import

    startup = max(3, min(10, tune.trials // 4))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if objective == "pareto":
        return sampler, optuna.pruners.NopPruner()
    return sampler, optuna.pruners.MedianPruner(n_startup_trials=tune.pruner.n_startup_trials,
                                                n_warmup_steps=tune.pruner.n_warmup_steps)


def run_worker(spec: WorkerSpec) -> str:
    """Load the study and work on it (in this process)."""
    import optuna  # lazy: optuna takes about 2 s to import
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.workers > 1:  # two processes with two threads each fight over two cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.workers))
    params, _ = load_params(spec.params_path, tuned=False)

    configure(params.execution.options())  # the trials train as the suite's runs
    tune = params.tune
    seed = params.seeds[0] if tune.seed is None else tune.seed
    storage = open_storage(spec.storage, tune)
    existing = sum(counts_of_storage(storage, spec.study).values())  # a resumed study: new seed
    sampler, pruner = sampler_and_pruner(spec.objective, tune, 1000 * seed + 100 * existing
                                         + spec.index)
    study = optuna.load_study(study_name=spec.study, storage=storage, sampler=sampler,
                              pruner=pruner)
    setup = Setup(params=params, key=spec.key, cfg=params.methods[spec.key] or {},
                  space=tune.spaces[spec.key], objective=spec.objective,
                  target_sparsity=tune.target_sparsity, seed=seed, study=spec.study)
    tracker = None
    if spec.parent_run_id is not None:
        tracker = TrialTracker(tracking_uri(params.tracking.uri), experiment_name(params),
                               spec.parent_run_id)
    claim = Claim(spec.storage, spec.study, tune.connect_timeout)
    objective = Objective(setup, load_splits(DATA_FILE, ("train", "val")),
                          resolve_device(params.device), claim, tracker)
    return work(study, objective, spec.trials, claim)


def counts_of_storage(storage: Any, study_name: str) -> Counter:
    """Trial states of a study by name, straight from its storage."""
    study_id = storage.get_study_id_from_name(study_name)
    return Counter(t.state.name for t in storage.get_all_trials(study_id, deepcopy=False))


def experiment_name(params: Any) -> str:
    """The MLflow experiment of a suite's studies: the suite's, with ``-tune``."""
    return f"{params.tracking.experiment or f'sparsebench-{params.suite}'}-tune"


def spec_json(spec: WorkerSpec) -> str:
    return json.dumps(asdict(spec))


def main(argv: list[str]) -> int:
    spec = WorkerSpec(**json.loads(argv[0]))
    try:
        why = run_worker(spec)
    except UsageError as exc:
        print(f"sparsebench: error: worker {spec.index}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"tune {spec.key} worker {spec.index}: stopped ({why})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
