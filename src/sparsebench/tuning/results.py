"""What a study leaves behind: its trials table, its plots, the chosen parameters.

Per method, in ``tuning/<key>/`` of the workspace: ``trials.csv`` (one row per trial: state,
validation accuracy, sparsity, feasibility, parameters, retry), ``pareto.png`` (every finished
trial in the sparsity-accuracy plane, the study's best trials, the target sparsity, the
hand-set and the chosen trial) and ``history.png`` (the validation accuracy per trial and the
best so far); both are Optuna's plots (``optuna.visualization.matplotlib``). The chosen
trial's parameters go to ``tuned/<key>.yaml``. `all_methods` draws every method's front on one
plot from the tables (``reports/tuning/``).

The chosen trial: for ``accuracy_at_sparsity`` Optuna's best feasible trial
(``study.best_trial``); for ``pareto`` the most accurate trial of the Pareto front
(``study.best_trials``) at or above the target sparsity. None when no trial
reaches the target: then no ``tuned/`` file is written.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sparsebench.tuning.trial import meets
from sparsebench.util.paths import atomic_write

TUNING_DIR = Path("tuning")
OWNER = "study.txt"  # beside a study's files: its name and storage (`study.check_outputs`)
ALL_DIR = Path("reports", "tuning")  # not under tuning/: a stage's output inside its input
COLUMNS = ["trial", "state", "val_accuracy", "sparsity", "feasible", "handset", "retry_of",
           "seconds", "mlflow_run_id"]


def trial_rows(study: Any, target: float) -> list[dict[str, Any]]:
    """One row per trial, in trial order, with its parameters as ``param.<name>`` columns."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        acc, sparsity = t.user_attrs.get("val_accuracy"), t.user_attrs.get("sparsity")
        row = {"trial": t.number, "state": t.state.name, "val_accuracy": acc,
               "sparsity": sparsity,
               "feasible": None if sparsity is None else meets(sparsity, target),
               "handset": bool(t.user_attrs.get("handset")),
               "retry_of": t.system_attrs.get("failed_trial"),
               "seconds": t.user_attrs.get("seconds"),
               "mlflow_run_id": t.user_attrs.get("mlflow_run_id")}
        row.update({f"param.{k}": v for k, v in t.params.items()})
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(k for row in rows for k in row)) if rows else COLUMNS
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_csv(path: Path) -> list[dict[str, Any]]:
    """A trials table back, with numbers as numbers (empty cells as None)."""
    def value(cell: str) -> Any:
        if cell == "":
            return None
        if cell in ("True", "False"):
            return cell == "True"
        for number in (int, float):
            try:
                return number(cell)
            except ValueError:
                pass
        return cell

    with open(path, newline="") as handle:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both coordinates (both maximised), by x."""
    front, best_y = [], float("-inf")
    for x, y in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def choose(study: Any, objective: str, target: float) -> Any:
    """The chosen trial (an ``optuna.trial.FrozenTrial``; see the module docstring), or None."""
    if objective == "accuracy_at_sparsity":
        try:
            return study.best_trial  # feasible trials only: the sparsity constraint
        except ValueError:  # nothing finished, or nothing feasible
            return None
    front = [t for t in study.best_trials if meets(t.values[1], target)]
    return max(front, key=lambda t: (*t.values, -t.number), default=None)


def _complete(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["state"] == "COMPLETE" and r["val_accuracy"] is not None]


def _finished(study: Any) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def _pyplot():
    import matplotlib  # lazy: matplotlib, for the plots alone

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib, for the plots alone

    return plt


def _save(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


@contextmanager
def _optuna_plot():
    """Around an ``optuna.visualization.matplotlib`` plot: Agg, no experimental-feature
    warning, and the style sheet it sets (ggplot) undone afterwards."""
    import optuna  # lazy: optuna takes about 2 s to import

    plt = _pyplot()
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield optuna.visualization.matplotlib


SPARSITY_AXIS, ACCURACY_AXIS = "sparsity of prunable weights (%)", "validation accuracy (%)"


def plot_pareto(study: Any, target: float, path: Path, title: str, chosen: Any) -> None:
    """Every finished trial in the (sparsity, validation accuracy) plane: Optuna's Pareto-front
    plot (its best trials marked, infeasible ones grey), the target sparsity, the hand-set
    and the chosen trial."""
    def point(t: Any) -> tuple[float, float]:
        return 100 * t.user_attrs["sparsity"], 100 * t.user_attrs["val_accuracy"]

    with _optuna_plot() as vm:
        ax = vm.plot_pareto_front(study, target_names=[SPARSITY_AXIS, ACCURACY_AXIS],
                                  targets=point)
        hand = next((t for t in _finished(study) if t.user_attrs.get("handset")), None)
        for trial, marker, label in ((hand, "s", "hand-set"), (chosen, "*", "chosen")):
            if trial is not None:
                ax.scatter(*point(trial), marker=marker, s=120, facecolors="none",
                           edgecolors="k", label=label)
        ax.axvline(100 * target, ls="--", c="k", lw=0.8)
        _save(ax.figure, ax, path, SPARSITY_AXIS, ACCURACY_AXIS, title)


def plot_history(study: Any, objective: str, path: Path, title: str) -> None:
    """Optuna's optimization history of the validation accuracy (with the best feasible so far
    for ``accuracy_at_sparsity``; with each trial's sparsity for ``pareto``)."""
    with _optuna_plot() as vm:
        if objective == "pareto":
            ax = vm.plot_optimization_history(study, target=lambda t: t.values[0],
                                              target_name="validation accuracy")
            done = _finished(study)
            ax.scatter([t.number for t in done], [t.values[1] for t in done], marker="x",
                       c="tab:green", label="sparsity")
        else:
            ax = vm.plot_optimization_history(study, target_name="validation accuracy")
        _save(ax.figure, ax, path, "trial", ax.get_ylabel(), title)


def write_study_outputs(study: Any, objective: str, target: float, out: Path,
                        ) -> tuple[list[Path], list[dict[str, Any]], dict[str, Any] | None]:
    """``out`` (``tuning/<key>/`` by default): trials.csv, pareto.png, history.png; return
    them, the rows and the chosen row."""
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, target)
    best = choose(study, objective, target)
    title = f"{study.study_name}: {len(rows)} trials"
    files = [out / "trials.csv", out / "pareto.png", out / "history.png"]
    atomic_write(files[0], to_csv(rows))
    plot_pareto(study, target, files[1], title, best)
    plot_history(study, objective, files[2], title)
    return files, rows, None if best is None else rows[best.number]


def all_methods(tuning_dir: Path = TUNING_DIR, out_dir: Path = ALL_DIR,
                target: float | None = None) -> list[Path]:
    """Every method's front on one plot (``pareto_all.png``) and as a table (``.json``), from
    the trials tables under ``tuning_dir``."""
    fronts = {}
    for table in sorted(tuning_dir.glob("*/trials.csv")):
        fronts[table.parent.name] = pareto_front([(r["sparsity"], r["val_accuracy"])
                                                  for r in _complete(read_csv(table))])
    fig, ax = _pyplot().subplots(figsize=(6.5, 4.5))
    for key, front in fronts.items():
        if front:
            ax.plot([100 * x for x, _ in front], [100 * y for _, y in front], marker="o",
                    ms=3, lw=1, label=key)
    if target is not None:
        ax.axvline(100 * target, ls="--", c="k", lw=0.8)
    files = [out_dir / "pareto_all.png", out_dir / "pareto_all.json"]
    out_dir.mkdir(parents=True, exist_ok=True)
    _save(fig, ax, files[0], SPARSITY_AXIS, ACCURACY_AXIS,
          "Pareto fronts of the tuning studies (validation split)")
    atomic_write(files[1], json.dumps(
        {k: [{"sparsity": x, "val_accuracy": y} for x, y in f] for k, f in fronts.items()},
        indent=1))
    return files
