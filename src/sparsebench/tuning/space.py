"""Optuna's side of a search space: a trial's suggestion for each range of ``tune.spaces``.

The spaces' schema and their checks against the methods' parameter models live in
`sparsebench.suite.space`, so that ``check-params`` validates them without Optuna.
"""

from __future__ import annotations

from typing import Any

from sparsebench.suite.space import Range, check_param


def suggest(trial: Any, key: str, cfg: dict[str, Any], space: dict[str, Range]) -> dict[str, Any]:
    """Sample one value per parameter of ``space`` from an Optuna trial; dotted name -> value."""
    values = {}
    for name, rng in space.items():
        kind = check_param(name, key, cfg, name)
        if rng.choices is not None:
            values[name] = trial.suggest_categorical(name, rng.choices)
        elif kind is int:
            values[name] = trial.suggest_int(name, int(rng.low), int(rng.high),
                                             step=int(rng.step or 1), log=rng.log)
        else:
            values[name] = trial.suggest_float(name, rng.low, rng.high, step=rng.step,
                                               log=rng.log)
    return values
