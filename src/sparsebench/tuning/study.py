"""``sparsebench tune --method KEY``: check everything, create the study once, run the workers,
collect the results.

Order matters: every check that can refuse (method, space, inputs, storage, an existing study
of another objective) runs before anything is written; then the study (with the hand-set
parameters queued as its first trial) and the MLflow parent run are created in this process,
once, before any worker starts: a fresh database raced by two processes crashes. A study that
exists with the same objective is resumed: only the missing finished trials run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sparsebench.methods import build_method, method_params
from sparsebench.run import MODEL
from sparsebench.suite.load import check_method, load_params
from sparsebench.suite.params import Params
from sparsebench.suite.plan import DATA_FILE
from sparsebench.suite.space import TuneParams, handset_values
from sparsebench.suite.tuned import Measured, TunedFile, read_tuned, tuned_path, write_tuned
from sparsebench.tracking.runs import client_for, git_commit, log_batches, tracking_uri
from sparsebench.tuning.results import OWNER, TUNING_DIR, write_study_outputs
from sparsebench.tuning.storage import check_reachable, default_url, open_storage, redact
from sparsebench.tuning.trial import DIRECTIONS
from sparsebench.tuning.worker import WorkerSpec, counts, experiment_name, run_worker, spec_json
from sparsebench.util.errors import Incomplete, UsageError
from sparsebench.util.paths import atomic_write, run_dir, seed_dir


@dataclass
class Request:
    """The command line, after defaults from the ``tune`` section."""
    params_path: str
    key: str
    objective: str
    trials: int
    workers: int
    storage: str
    storage_flag: str  # where the URL came from, for messages
    study: str
    out: Path  # the study's files (trials table, plots)
    overwrite: bool  # replace another study's files there


def request(params_path: str, params: Params, methods: dict[str, Any], key: str, *,
            objective: str | None = None, trials: int | None = None,
            workers: int | None = None, storage: str | None = None,
            study: str | None = None, out: str | Path | None = None,
            overwrite: bool = False) -> Request:
    """The study to run, refused in one line if the method cannot be tuned as asked."""
    tune = params.tune
    check_method(key, methods)
    if key not in tune.spaces:
        raise UsageError(f"--method: {key!r} has no search space under tune.spaces; allowed: "
                         f"{', '.join(tune.spaces) or 'none yet (add tune.spaces.' + key + ')'}")
    objective = objective or tune.objective
    for flag, value in (("--trials", trials), ("--workers", workers)):
        if value is not None and value < 1:
            raise UsageError(f"{flag}: {value} is not allowed; allowed: an integer >= 1")
    if study is not None and not study.strip():
        raise UsageError("--study: '' is not allowed; allowed: a non-empty name")
    return Request(params_path, key, objective, trials or tune.trials, workers or tune.workers,
                   storage or tune.storage or default_url(),
                   "--storage" if storage else "tune.storage",
                   study or f"{params.suite}-{key}-{objective}",
                   TUNING_DIR / key if out is None else Path(out), overwrite)


def check_inputs(params: Params, req: Request) -> None:
    """The data (and the pretrained model) exist."""
    cfg = params.methods[req.key] or {}
    hand = method_params(req.key, cfg)
    tune = params.tune  # target-driven methods run at the level tune.target_sparsity gives
    if not DATA_FILE.exists():
        raise UsageError(f"input: {str(DATA_FILE)!r} does not exist; run sparsebench prepare "
                         "(dvc repro prepare) first")
    seed = params.seeds[0] if tune.seed is None else tune.seed
    if tune.seed is not None and tune.seed not in params.seeds:
        raise UsageError(f"tune.seed: {tune.seed} is not allowed; allowed: one of seeds "
                         f"({', '.join(map(str, params.seeds))})")
    may_need = build_method(req.key, hand).from_pretrained or "init" in tune.spaces[req.key]
    model = seed_dir(run_dir("pretrain"), seed) / MODEL
    if may_need and not model.exists():
        raise UsageError(f"input: {str(model)!r} does not exist; methods.{req.key} starts from "
                         "the suite's pretrained model, which tune does not train: run "
                         "sparsebench pretrain (dvc repro pretrain) first")


def check_outputs(req: Request) -> None:
    """Refuse, before the storage is opened and any trial runs, a study whose files would
    replace another study's: ``req.out`` holds a trials table whose owner file names another
    study (or, for files written before owners were recorded, whose study this storage does
    not hold, as the committed ``tuning/<key>/`` in a fresh clone). ``--out`` puts the new
    study's files elsewhere, ``--overwrite`` replaces them. Under ``dvc repro`` the stage's
    outputs are removed before it runs, so nothing is refused there."""
    table = req.out / "trials.csv"
    if req.overwrite or not table.exists():
        return
    owner = req.out / OWNER
    if owner.exists():
        if owner.read_text() == owner_text(req):
            return  # this study's own files, brought up to date
        name, where = [*owner.read_text().splitlines(), "?", "?"][:2]
        whose = f"study {name!r} in {where!r}"
    elif _holds(req.storage, req.study):
        return
    else:
        whose = "a study that is not this one"
    trials = max(0, len(table.read_text().splitlines()) - 1)
    raise UsageError(f"{table}: holds {trials} trials of {whose}; --study {req.study!r} in "
                     f"{redact(req.storage)!r} would replace them; allowed: --out DIR for this "
                     "study's files, or --overwrite to replace them")


def owner_text(req: Request) -> str:
    """The content of the owner file of a study's files: its name and storage."""
    return f"{req.study}\n{redact(req.storage)}\n"


def _holds(url: str, study: str) -> bool:
    """Whether the storage at ``url`` holds ``study`` (an SQLite file that does not exist holds
    none, and is not created)."""
    import optuna  # lazy: optuna takes about 2 s to import

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return False
    return study in optuna.get_all_study_names(url)


def open_study(storage: Any, req: Request, params: Params, handset: dict[str, Any]):
    """Create the study (hand-set parameters queued first), or load it if it exists with the
    same objective, method and target. Refuses before touching an existing study."""
    import optuna  # lazy: optuna takes about 2 s to import

    tune = params.tune
    wanted = {"suite": params.suite, "objective": req.objective, "method_key": req.key,
              "target_sparsity": tune.target_sparsity}
    try:
        study = optuna.create_study(study_name=req.study, storage=storage,
                                    directions=DIRECTIONS[req.objective])
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=req.study, storage=storage)
        found = {k: study.user_attrs.get(k) for k in wanted}
        adopted = found["suite"] is None  # made before the suite was recorded
        if adopted:
            found["suite"] = params.suite
        directions = [d.name.lower() for d in study.directions]
        if directions != DIRECTIONS[req.objective] or found != wanted:
            shown = ", ".join(f"{k} {v}" for k, v in found.items())
            raise UsageError(
                f"--study: {req.study!r} exists in {redact(req.storage)!r} with "
                f"{shown}, directions {', '.join(directions)}; allowed: the same suite, "
                "objective, method and target, or another --study name") from None
        if adopted:
            study.set_user_attr("suite", params.suite)
        return study, False
    for name, value in wanted.items():
        study.set_user_attr(name, value)
    study.enqueue_trial(handset, user_attrs={"handset": True})
    return study, True


def parent_run(study: Any, params: Params, req: Request, tune: TuneParams) -> str:
    """The study's MLflow run (created once; reused when the study resumes), RUNNING."""
    from mlflow.entities import Param  # lazy: mlflow takes about 3 s to import

    client, experiment_id = client_for(tracking_uri(params.tracking.uri),
                                       experiment_name(params))
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id is not None:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # the run lives in another tracking store: start a new one
            pass
    tags = {"optuna.study": req.study, "method_key": req.key, "suite": params.suite,
            "objective": req.objective, "dvc_stage": f"tune@{req.key}",
            "git_commit": git_commit()}
    run_id = client.create_run(experiment_id, tags=tags, run_name=req.study).info.run_id
    items = {"objective": req.objective, "trials": req.trials, "workers": req.workers,
             "target_sparsity": tune.target_sparsity, "storage": redact(req.storage),
             "space": json.dumps({k: v.model_dump(exclude_none=True)
                                  for k, v in tune.spaces[req.key].items()})}
    log_batches(client, run_id, [], [Param(k, str(v)) for k, v in items.items()])
    study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id


def run_workers(specs: list[Any]) -> list[int]:
    """One worker in this process, or one subprocess each; their exit codes."""
    if len(specs) == 1:
        print(f"tune {specs[0].key} worker 0: stopped ({run_worker(specs[0])})", flush=True)
        return [0]
    procs = [subprocess.Popen([sys.executable, "-m", "sparsebench.tuning.worker",
                               spec_json(spec)]) for spec in specs]
    try:
        return [proc.wait() for proc in procs]
    except KeyboardInterrupt:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait()
        raise


def tune(params_path: str | Path, key: str, **options: Any) -> dict[str, Any]:
    """Run (or resume) the study of ``methods.<key>``; write its results; return a summary."""
    import optuna  # lazy: optuna takes about 2 s to import

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params, methods = load_params(params_path, tuned=False)
    req = request(str(params_path), params, methods, key, **options)
    check_inputs(params, req)
    tune_params = params.tune
    check_outputs(req)  # first: reaching an SQLite URL creates its file
    check_reachable(req.storage, req.storage_flag, tune_params.connect_timeout)
    cfg = params.methods[key] or {}
    current = read_tuned(key)  # a bad file is refused now, not after the trials
    in_use = (current.params if current is not None else
              handset_values(key, cfg, tune_params.spaces[key]))
    storage = open_storage(req.storage, tune_params)
    study, created = open_study(storage, req, params,
                                handset_values(key, cfg, tune_params.spaces[key]))
    parent = parent_run(study, params, req, tune_params) if params.tracking.enabled else None
    before = counts(study)
    done = before["COMPLETE"] + before["PRUNED"]
    print(f"tune {key}: study {req.study!r} in {redact(req.storage)} "
          f"({'new' if created else 'resumed'}): {done} of {req.trials} trials finished; "
          f"{max(0, req.trials - done)} to run on {req.workers} worker(s)", flush=True)
    start = time.perf_counter()
    codes = []
    if done < req.trials:
        spec = WorkerSpec(str(params_path), key, req.study, req.storage, req.objective,
                          req.trials, req.workers, 0, parent)
        codes = run_workers([replace(spec, index=i) for i in range(req.workers)])
    return collect(study, params, req, parent, codes, time.perf_counter() - start, in_use)


def collect(study: Any, params: Params, req: Request, parent: str | None, codes: list[int],
            seconds: float, in_use: dict[str, Any]) -> dict[str, Any]:
    """Write the study's outputs and ``tuned/<key>.yaml`` (only when the chosen values differ
    from ``in_use``, the tuned file's or params.yaml's); close the MLflow run."""
    tune = params.tune
    c = counts(study)
    finished = c["COMPLETE"] + c["PRUNED"]
    files, rows, chosen = write_study_outputs(study, req.objective, tune.target_sparsity,
                                              req.out)
    atomic_write(req.out / OWNER, owner_text(req))
    hand = next((r for r in rows if r["handset"] and r["state"] == "COMPLETE"), None)
    summary = {"study": req.study, "finished": finished, "failed": c["FAIL"],
               "pruned": c["PRUNED"], "seconds": seconds, "worker_exit_codes": codes,
               "chosen": chosen, "handset": hand, "tuned_file": None}
    if chosen is not None:
        def measured(row: dict) -> Measured:
            return Measured(trial=row["trial"], val_accuracy=row["val_accuracy"],
                            sparsity=row["sparsity"])

        trial = study.trials[chosen["trial"]]
        summary["unchanged"] = trial.params == in_use
        tuned = TunedFile(method=req.key, study=req.study, objective=req.objective,
                          target_sparsity=tune.target_sparsity,
                          seed=params.seeds[0] if tune.seed is None else tune.seed,
                          finished_trials=finished, best=measured(chosen),
                          handset=measured(hand) if hand else None, params=trial.params)
        if not summary["unchanged"]:  # the same values: every stage stays up to date
            summary["tuned_file"] = str(write_tuned(tuned))
    if parent is not None:
        _close_parent(params, parent, files, summary, finished >= req.trials)
    _print_summary(req, summary, codes)
    if finished < req.trials:
        raise Incomplete(f"study {req.study!r} has {finished} of {req.trials} finished "
                             f"trials ({c['FAIL']} failed; worker exit codes {codes}); run "
                             "the same command again to resume it")
    return summary


def _close_parent(params: Params, run_id: str, files: list[Path], summary: dict,
                  complete: bool) -> None:
    from mlflow.entities import Metric  # lazy: mlflow takes about 3 s to import

    client, _ = client_for(tracking_uri(params.tracking.uri), experiment_name(params))
    now = int(time.time() * 1000)
    figures = {"finished_trials": summary["finished"], "failed_trials": summary["failed"],
               "pruned_trials": summary["pruned"]}
    for name, row in (("best", summary["chosen"]), ("handset", summary["handset"])):
        if row is not None:
            figures[f"{name}_val_accuracy"] = row["val_accuracy"]
            figures[f"{name}_sparsity"] = row["sparsity"]
    log_batches(client, run_id, [Metric(k, float(v), now, 0) for k, v in figures.items()], [])
    for path in files:
        client.log_artifact(run_id, str(path), "tuning")
    if summary["tuned_file"]:
        client.log_artifact(run_id, summary["tuned_file"], "tuned")
    client.set_terminated(run_id, status="FINISHED" if complete else "FAILED")


def _print_summary(req: Request, summary: dict, codes: list[int]) -> None:
    dead = [f"worker {i} exited with {code}" for i, code in enumerate(codes) if code]
    line = (f"tune {req.key}: {summary['finished']} finished trials ({summary['pruned']} "
            f"pruned, {summary['failed']} failed) in {summary['seconds']:.0f}s")
    chosen, hand = summary["chosen"], summary["handset"]
    if chosen is not None:
        line += (f"; chosen trial {chosen['trial']}: val_accuracy "
                 f"{chosen['val_accuracy']:.4f} at sparsity {chosen['sparsity']:.4f}")
    else:
        line += "; no trial reached the target sparsity, so no tuned/ file was written"
    if hand is not None:
        line += f" (hand-set: {hand['val_accuracy']:.4f} at {hand['sparsity']:.4f})"
    if summary["tuned_file"]:
        line += f"; wrote {summary['tuned_file']}"
    elif summary.get("unchanged"):
        line += (f"; the chosen values are those in use ({tuned_path(req.key)} or params.yaml): "
                 "nothing written")
    if dead:
        line += f"; {', '.join(dead)}"
    print(line, flush=True)
