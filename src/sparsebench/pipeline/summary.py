"""A method's summary files: ``evaluation/<key>.json`` (mean and std per level, every run's
figures and layers) and ``metrics/<key>.json`` (the mean test accuracy per level, one row of
``dvc metrics show``), and where its parameters came from (hand-set, tuned, calibrated).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from sparsebench.methods import MethodParams, method_class
from sparsebench.pipeline.calibrate import calibrated_path
from sparsebench.suite.plan import Planned
from sparsebench.suite.tuned import read_tuned
from sparsebench.util.paths import atomic_write_many


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean_std(figures: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std over runs of every number any of them has (latency: one seed)."""
    keys = sorted({k for f in figures for k, v in f.items() if isinstance(v, (int, float))})
    return ({k: statistics.fmean(f[k] for f in figures if k in f) for k in keys},
            {k: _std([f[k] for f in figures if k in f]) for k in keys})


def metric_column(level: str) -> str:
    """A level's name as a column of ``dvc metrics show``, which orders its columns as text: the
    compression padded to three digits (c008 < c016 < c128, c71.2 -> c071.2); dense as it is."""
    if not level.startswith("c"):
        return level
    whole, dot, fraction = level[1:].partition(".")
    return f"c{whole:0>3}{dot}{fraction}"


def write_method_metrics(key: str, method: MethodParams, planned: list[Planned],
                         results: dict[str, dict]) -> dict:
    """``evaluation/<key>.json`` (the mean and std per level, every run's figures and layers)
    and ``metrics/<key>.json`` (the mean test accuracy per measured level alone: one row of
    ``dvc metrics show``), each whole (`atomic_write_many`)."""
    by_level: dict[str, list[dict]] = {}
    for p in planned:
        by_level.setdefault(p.out.parent.name, []).append(results[p.name])
    summary: dict[str, Any] = {"method": method_class(key, method.model_dump()).name,
                               "params": params_source(key), "levels": {}}
    for name, runs in by_level.items():
        figures = [r["figures"] for r in runs if not r["point"]]
        entry: dict[str, Any] = {"level": runs[0]["level"], "epochs": runs[0]["epochs"],
                                 "seeds": len({r["seed"] for r in runs})}
        if figures:
            entry["mean"], entry["std"] = mean_std(figures)
            for part in ("train", "run"):
                values = [r["seconds"][part] for r in runs]
                entry["mean"][f"{part}_seconds"] = statistics.fmean(values)
                entry["std"][f"{part}_seconds"] = _std(values)
        else:
            entry["interpolated"] = True
        summary["levels"][name] = entry
    details = {**summary, "runs": [{k: v for k, v in results[p.name].items()
                                    if k != "fingerprint"} for p in planned]}
    accuracy = {metric_column(name): entry["mean"]["test_accuracy"]
                for name, entry in summary["levels"].items() if "mean" in entry}
    atomic_write_many({Path("evaluation", f"{key}.json"): json.dumps(details, indent=1),
                       Path("metrics", f"{key}.json"): json.dumps(accuracy, indent=1)})
    return summary


def params_source(key: str) -> dict[str, Any]:
    """Whether ``methods.<key>`` ran with tuned parameters (``tuned/<key>.yaml``), calibrated
    strengths (``calibrated/<key>.yaml``) or the hand-set ones."""
    tuned = read_tuned(key)
    info: dict[str, Any] = {"source": "default"}
    if tuned is not None:
        info = {"source": "tuned", "study": tuned.study, "trials": tuned.finished_trials,
                "values": tuned.params, "val_accuracy": tuned.best.val_accuracy,
                "val_sparsity": tuned.best.sparsity}
        if tuned.handset is not None:
            info["handset_val_accuracy"] = tuned.handset.val_accuracy
            info["handset_val_sparsity"] = tuned.handset.sparsity
    if calibrated_path(key).exists():
        info["calibrated"] = str(calibrated_path(key))
    return info
