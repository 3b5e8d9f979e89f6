"""The records that cross a boundary: a run's ``result.json`` (`run.RunResult`) and a report row
(`report.record.CurveRow`), one name per figure from the run to the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from sparsebench.core.levels import MAX_COMPRESSION
from sparsebench.report.record import INTERPOLATED, CurveRow
from sparsebench.report.rows import curve_rows
from sparsebench.report.stats import CSV_COLUMNS
from sparsebench.report.tables import curves_csv, read_curves_csv
from sparsebench.run import RunResult, read_result

ROOT = Path(__file__).resolve().parents[1]


def _run(level: float | None = 8.0, point: str = "", seed: int = 0, **figures) -> dict:
    base = {"test_accuracy": 0.98, "test_loss": 0.07, "val_accuracy": 0.975, "sparsity": 0.875,
            "compression": 8.0, "compression_all": 7.5, "flop_speedup": 7.0,
            "checkpoint_bytes": 1000, "latency_b1_ratio": 0.9}
    return {"key": "admm", "method": "ADMM", "level": level, "point": point, "seed": seed,
            "figures": {**base, **figures}, "layers": {"fc1": {"sparsity": 0.9}},
            "epochs": {"pretrain": 10, "prune": 4, "retrain": 10, "total": 24},
            "seconds": {"train": 12.5, "run": 15.0}, "params": {"rho": 0.01},
            "environment": {"cpu": "x"}}


OLD_NAMES = {"compression": "compression_ratio", "compression_all": "compression_ratio_all",
             "flop_speedup": "theoretical_speedup"}


def _as_written_before(run: dict) -> dict:
    """A record as runs wrote it before the figures had one name each."""
    figures = {OLD_NAMES.get(k, k): v for k, v in run["figures"].items()}
    return {**run, "figures": figures}


def test_a_record_of_the_old_figure_names_reads_under_todays():
    committed = json.loads((ROOT / "evaluation" / "admm.json").read_text())["runs"][0]
    assert "compression" in committed["figures"]
    old = _as_written_before(committed)
    figures = old["figures"]
    read = read_result(old)["figures"]
    assert read["compression"] == figures["compression_ratio"]
    assert read["compression_all"] == figures["compression_ratio_all"]
    assert read["flop_speedup"] == figures["theoretical_speedup"]
    assert read["latency_b1_ratio"] == figures["latency_b1_ratio"]  # further figures kept
    assert "compression_ratio" not in read


def test_a_record_lacking_a_figure_or_with_a_bad_one_is_refused():
    run = _run()
    del run["figures"]["flop_speedup"]
    with pytest.raises(ValidationError, match="flop_speedup"):
        RunResult.model_validate(run)
    with pytest.raises(ValidationError, match="test_accuracy"):
        RunResult.model_validate(_run(test_accuracy="high"))


def test_a_row_keeps_the_runs_names_and_the_csv_reads_back_typed():
    row = CurveRow.of_run("admm", read_result(_run()), 8.0).record()
    assert list(row)[:len(CSV_COLUMNS)] == CSV_COLUMNS
    assert (row["compression"], row["flop_speedup"], row["val_accuracy"]) == (8.0, 7.0, 0.975)
    assert row["level_sparsity"] == 1 - 1 / 8
    back = read_curves_csv(curves_csv([row]))[0]
    assert back == row
    assert isinstance(back["val_accuracy"], float) and isinstance(back["seed"], int)


def test_a_bracketed_level_interpolates_its_figures_in_log2_compression():
    low = CurveRow.of_run("grda", read_result(_run(compression=4.0, test_accuracy=0.98,
                                                   val_accuracy=0.97, checkpoint_bytes=2000,
                                                   flop_speedup=3.5)), 8.0)
    high = CurveRow.of_run("grda", read_result(_run(compression=16.0, test_accuracy=0.96,
                                                    val_accuracy=0.95, checkpoint_bytes=1000)),
                           8.0)
    row = low.interpolate(high, 8.0, MAX_COMPRESSION)  # halfway in log2: 2 of 2..4
    assert row.interpolated and row.compression == 8.0 and row.sparsity == 1 - 1 / 8
    for name in INTERPOLATED:
        assert getattr(row, name) == pytest.approx((getattr(low, name) + getattr(high, name)) / 2)
    assert row.flop_speedup == pytest.approx(3.5 * 8.0 / 4.0)


def test_curve_rows_reads_the_evaluation_files_of_either_naming():
    new = json.loads((ROOT / "evaluation" / "magnitude.json").read_text())
    old = {"runs": [_as_written_before(r) for r in new["runs"]]}
    assert curve_rows({"magnitude": old}) == curve_rows({"magnitude": new})
