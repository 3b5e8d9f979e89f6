"""The study's leavings without a study: Pareto fronts, the choice, tables and plots."""

from __future__ import annotations

from pathlib import Path

from sparsebench.tuning.results import (
    all_methods,
    choose,
    pareto_front,
    plot_history,
    plot_pareto,
    read_csv,
    to_csv,
)


def _row(trial, acc, sparsity, state="COMPLETE", handset=False, target=0.95):
    return {"trial": trial, "state": state, "val_accuracy": acc, "sparsity": sparsity,
            "feasible": None if sparsity is None else sparsity >= target, "handset": handset}


ROWS = [_row(0, 0.97, 0.95, handset=True), _row(1, 0.98, 0.90), _row(2, 0.975, 0.96),
        _row(3, 0.96, 0.97), _row(4, 0.95, 0.96), _row(5, None, None, state="PRUNED")]


def test_the_front_keeps_only_points_nothing_beats_on_both_axes():
    points = [(0.90, 0.98), (0.95, 0.97), (0.96, 0.975), (0.97, 0.96), (0.96, 0.95)]
    assert pareto_front(points) == [(0.90, 0.98), (0.96, 0.975), (0.97, 0.96)]
    assert pareto_front([]) == []


def test_pareto_choice_is_the_most_accurate_trial_at_the_target():
    assert choose(ROWS, None, "pareto")["trial"] == 2  # 0.98 is below the target sparsity
    assert choose([_row(1, 0.98, 0.90)], None, "pareto") is None


def test_tables_round_trip_and_plots_are_written(tmp_path):
    (tmp_path / "gmp").mkdir()
    (tmp_path / "gmp" / "trials.csv").write_text(to_csv(ROWS))
    back = read_csv(tmp_path / "gmp" / "trials.csv")
    assert back[2] == ROWS[2] and back[5]["val_accuracy"] is None
    plot_pareto(ROWS, 0.95, tmp_path / "p.png", "t", ROWS[2])
    plot_history(ROWS, "pareto", tmp_path / "h.png", "t")
    files = all_methods(tmp_path, tmp_path / "all", target=0.95)
    assert [f.name for f in files] == ["pareto_all.png", "pareto_all.json"]
    for png in (tmp_path / "p.png", tmp_path / "h.png", files[0]):
        assert Path(png).read_bytes()[:4] == b"\x89PNG"
    assert '"gmp"' in files[1].read_text()
