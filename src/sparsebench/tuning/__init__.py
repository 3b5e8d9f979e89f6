"""Optuna tuning of any registered method: ``sparsebench tune --method KEY``.

- `space`: the search spaces of ``tune.spaces`` in params.yaml, checked against each method's
  parameters and sampled per trial.
- `storage`: the study's storage (SQLite in the repo by default, any SQLAlchemy URL), reached or
  refused in seconds, with heartbeats; the study created once, or resumed.
- `trial`: one trial: the method's prune phase and masked retrain on the training split,
  judged on the validation split (the test split is never loaded), reported per epoch, logged
  as a nested MLflow run.
- `worker`: the loop each worker process runs, so that exactly N trials finish.
- `results`: the trials table, the Pareto and history plots, ``tuned/<key>.yaml``.
- `study`: the ``tune`` command: check, create, start the workers, collect.

Nothing here is imported by the library core or the pipeline stages: optuna is imported only
by the commands that tune.
"""
