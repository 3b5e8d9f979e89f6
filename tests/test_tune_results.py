"""The study's leavings on in-memory studies: Pareto fronts, the choice, tables and plots."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sparsebench.tuning.results import (
    all_methods,
    choose,
    pareto_front,
    plot_history,
    plot_pareto,
    read_csv,
    to_csv,
    trial_rows,
)
from sparsebench.tuning.trial import DIRECTIONS

TARGET = 0.95
POINTS = [(0.97, 0.95), (0.98, 0.90), (0.975, 0.96), (0.96, 0.97), (0.95, 0.96)]


def _study(objective: str, points=POINTS, pruned: bool = True) -> optuna.Study:
    """A study with one finished trial per (accuracy, sparsity), the first hand-set, then a
    pruned one; ``accuracy_at_sparsity`` trials carry the sparsity constraint."""
    study = optuna.create_study(directions=DIRECTIONS[objective])
    for i, (acc, sparsity) in enumerate(points):
        single = objective == "accuracy_at_sparsity"
        study.add_trial(optuna.trial.create_trial(
            values=[acc] if single else [acc, sparsity],
            constraints={"sparsity": TARGET - sparsity} if single else None,
            user_attrs={"val_accuracy": acc, "sparsity": sparsity, "handset": i == 0}))
    if pruned:
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    return study


def test_the_front_keeps_only_points_nothing_beats_on_both_axes():
    points = [(s, a) for a, s in POINTS]
    assert pareto_front(points) == [(0.90, 0.98), (0.96, 0.975), (0.97, 0.96)]
    assert pareto_front([]) == []


@pytest.mark.parametrize("objective", ["pareto", "accuracy_at_sparsity"])
def test_the_choice_is_the_most_accurate_trial_at_the_target(objective):
    assert choose(_study(objective), objective, TARGET).number == 2  # 0.98 is below the target
    assert choose(_study(objective, [(0.98, 0.90)]), objective, TARGET) is None


def test_tables_round_trip_and_plots_are_written(tmp_path):
    study = _study("pareto")
    rows = trial_rows(study, TARGET)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 5 + ["PRUNED"]
    assert [r["feasible"] for r in rows] == [True, False, True, True, True, None]
    (tmp_path / "gmp").mkdir()
    (tmp_path / "gmp" / "trials.csv").write_text(to_csv(rows))
    back = read_csv(tmp_path / "gmp" / "trials.csv")
    assert back[2] == rows[2] and back[5]["val_accuracy"] is None
    for objective in ("pareto", "accuracy_at_sparsity"):
        study = _study(objective)
        plot_pareto(study, TARGET, tmp_path / f"p-{objective}.png", "t", study.trials[2])
        plot_history(study, objective, tmp_path / f"h-{objective}.png", "t")
    files = all_methods(tmp_path, tmp_path / "all", target=TARGET)
    assert [f.name for f in files] == ["pareto_all.png", "pareto_all.json"]
    for png in [*tmp_path.glob("*.png"), files[0]]:
        assert Path(png).read_bytes()[:4] == b"\x89PNG"
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert '"gmp"' in files[1].read_text()
