"""``sparsebench replicate``: which claims of one report another one makes too."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsebench.pipeline.cli import main
from sparsebench.report.replicate import compare, pair_claims
from sparsebench.report.tables import curves_csv
from sparsebench.util.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
REPLICATION = ROOT.parent / "shared" / "replication" / "curves.csv"


def row(method: str, level: float, seed: int, acc: float) -> dict:
    return {"method": method, "level": level, "level_sparsity": 1 - 1 / level, "seed": seed,
            "test_accuracy": acc, "sparsity": 1 - 1 / level, "compression": level,
            "flop_speedup": level, "epochs": 10, "train_seconds": 1.0, "interpolated": False}


def report(**accuracies: list[float]) -> list[dict]:
    """Rows at 8x: method -> its accuracy per seed."""
    return [row(m, 8.0, s, acc) for m, accs in accuracies.items() for s, acc in enumerate(accs)]


A = report(admm=[0.98, 0.981, 0.979], gmp=[0.97, 0.971, 0.969], random=[0.90, 0.92, 0.91])


def test_a_report_replicates_itself_wholly():
    result = compare(A, A)
    assert result["pairs"] == 3 and result["claims_a"] == result["held"] == 3
    assert (result["reversed"], result["lost"], result["new"]) == (0, 0, 0)
    assert result["max_se"] == 0.0


def test_claims_held_reversed_lost_and_new_are_counted():
    b = report(admm=[0.96, 0.961, 0.959],  # now behind gmp: a reversal
               gmp=[0.97, 0.971, 0.969],
               random=[0.96, 0.98, 0.90])  # against admm and gmp: within noise
    assert pair_claims(A)[(8.0, "admm", "gmp")] == 1
    assert pair_claims(b)[(8.0, "admm", "gmp")] == -1
    result = compare(A, b)
    assert (result["held"], result["reversed"], result["lost"], result["new"]) == (0, 1, 2, 0)
    assert compare(b, A)["new"] == 2  # what b cannot tell apart, A can
    assert result["max_cell"] == ("admm", 8.0)


@pytest.mark.skipif(not REPLICATION.exists(), reason="no ../shared/replication here")
def test_the_committed_report_against_another_machines():
    from sparsebench.report.tables import read_curves_csv

    ours = read_curves_csv((ROOT / "reports" / "curves.csv").read_text())
    theirs = read_curves_csv(REPLICATION.read_text())
    result = compare(ours, theirs)
    assert (result["claims_a"], result["held"], result["reversed"], result["lost"],
            result["new"]) == (141, 130, 0, 11, 15)


@pytest.mark.parametrize(("other", "match"), [
    (report(admm=[0.98, 0.981, 0.979], gmp=[0.97, 0.971, 0.969]), "methods differ"),
    ([{**r, "level": 16.0, "level_sparsity": 1 - 1 / 16} for r in A], "levels differ"),
    ([r for r in A if r["seed"] == 0], "has one seed"),
])
def test_reports_of_another_suite_or_one_seed_are_refused(other, match):
    with pytest.raises(UsageError, match=match):
        compare(A, other)


def test_the_command_refuses_a_missing_column_or_file_in_one_line(tmp_path, capsys):
    good, bad = tmp_path / "a.csv", tmp_path / "b.csv"
    good.write_text(curves_csv(A))
    bad.write_text(curves_csv(A).replace("test_accuracy", "accuracy", 1))
    assert main(["replicate", str(good), str(good)]) == 0
    assert "held in B: 3 (100.0%)" in capsys.readouterr().out
    assert main(["replicate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "test_accuracy" in err and "missing" in err and len(err.strip().splitlines()) == 1
    assert main(["replicate", str(good), str(tmp_path / "none.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
