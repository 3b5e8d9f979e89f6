"""``sparsebench replicate``: which claims of one report another one makes too."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sparsebench.pipeline.cli import main
from sparsebench.report.replicate import compare, pair_claims, summary_lines
from sparsebench.report.tables import curves_csv
from sparsebench.util.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
REPLICATION = ROOT.parent / "shared" / "replication" / "curves.csv"


def row(method: str, level: float, seed: int, acc: float, interpolated: bool = False) -> dict:
    return {"method": method, "level": level, "level_sparsity": 1 - 1 / level, "seed": seed,
            "test_accuracy": acc, "sparsity": 1 - 1 / level, "compression": level,
            "flop_speedup": level, "epochs": 10, "train_seconds": 1.0,
            "interpolated": interpolated}


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


# gmp - magnitude: 0.010, 0.014, 0.018, t = 0.014 / (0.004 / √3), p = 1 − t / √(2 + t²) = 0.026
# (df 2): a claim on its own; random is far off but noisy (p 0.14, 0.16); Holm over the three
# pairs: 3 · 0.026 = 0.078, no claim
NEAR = report(gmp=[0.97, 0.972, 0.975], magnitude=[0.96, 0.958, 0.957], random=[0.5, 0.9, 0.7])
# binary fractions: every difference exact, its std 0, its p 0
SHARP = report(gmp=[0.75, 0.625, 0.875], magnitude=[0.5, 0.375, 0.625], random=[0.25, 0.125, 0.375])


def test_holm_takes_back_a_claim_that_one_interval_alone_makes():
    t = 0.014 / (0.004 / math.sqrt(3))
    assert 0.05 / 3 < 1 - t / math.sqrt(2 + t * t) < 0.05
    assert pair_claims(NEAR, corrected=False) == {
        (8.0, "gmp", "magnitude"): 1, (8.0, "gmp", "random"): 0, (8.0, "magnitude", "random"): 0}
    assert pair_claims(NEAR) == dict.fromkeys(pair_claims(NEAR, corrected=False), 0)
    assert set(pair_claims(SHARP).values()) == {1}
    corrected, uncorrected = compare(NEAR, SHARP), compare(NEAR, SHARP, corrected=False)
    counts = ("corrected", "pairs", "claims_a", "held", "reversed", "lost", "new", "claims_b")
    assert [corrected[k] for k in counts] == [True, 3, 0, 0, 0, 0, 3, 3]
    assert [uncorrected[k] for k in counts] == [False, 3, 1, 1, 0, 0, 2, 3]
    assert corrected["max_se"] == uncorrected["max_se"]  # the cells move alike
    assert "Holm over each level's pairs, family-wise 5%" in summary_lines(corrected)[0]
    assert "95% each, uncorrected" in summary_lines(uncorrected)[0]
    assert summary_lines(uncorrected)[1].startswith("claims in A: 1; held in B: 1 (100.0%), ")
    assert summary_lines(compare(SHARP, NEAR))[1] == (
        "claims in A: 3; held in B: 0 (0.0%), reversed: 0, lost to noise: 3; new in B: 0 "
        "(claims in B: 0)")


@pytest.mark.parametrize("rows", [A, NEAR, SHARP])
def test_a_corrected_claim_is_an_uncorrected_one(rows):
    """Holm's p is at least the pair's own p: what the corrected tests claim, the uncorrected
    95% intervals claim too, the same way round."""
    corrected, uncorrected = pair_claims(rows), pair_claims(rows, corrected=False)
    assert set(corrected) == set(uncorrected)
    assert all(uncorrected[k] == s for k, s in corrected.items() if s != 0)


def test_a_claim_has_the_sign_of_the_paired_difference():
    # x beats y by 0.125 on both common measured seeds (0, 1); y's mean is higher only
    # because of seeds 2, 3, where x's points are interpolated
    rows = (report(x=[0.5, 0.625], y=[0.375, 0.5, 0.9375, 0.9375])
            + [row("x", 8.0, s, 0.75, interpolated=True) for s in (2, 3)])
    assert pair_claims(rows, corrected=False) == {(8.0, "x", "y"): 1}
    assert pair_claims(rows) == {(8.0, "x", "y"): 1}


def with_arithmetic(rows: list[dict], *digests: str) -> list[dict]:
    """The rows with their `arithmetic` digest, the digests taken in turn."""
    return [{**r, "arithmetic": digests[i % len(digests)]} for i, r in enumerate(rows)]


def arithmetic_line(a: list[dict], b: list[dict]) -> str:
    line = summary_lines(compare(a, b))[-1]
    assert line.startswith("arithmetic (digest of the runs' environment): A ")
    return line.removeprefix("arithmetic (digest of the runs' environment): ")


def test_the_arithmetic_of_the_two_reports_is_compared():
    x86, arm = with_arithmetic(A, "3f2a"), with_arithmetic(A, "9c1e")
    result = compare(x86, arm)
    assert (result["arithmetic_a"], result["arithmetic_b"]) == (["3f2a"], ["9c1e"])
    assert arithmetic_line(x86, arm) == "A 3f2a; B 9c1e: different"
    assert arithmetic_line(x86, with_arithmetic(A, "3f2a")) == "A 3f2a; B 3f2a: the same"
    mixed = with_arithmetic(A, "9c1e", "3f2a")
    assert compare(mixed, x86)["arithmetic_a"] == ["3f2a", "9c1e"]  # sorted, each once
    assert arithmetic_line(mixed, x86) == "A 3f2a, 9c1e; B 3f2a: different"
    assert arithmetic_line(A, A) == "A unrecorded; B unrecorded: not known to be the same"
    assert arithmetic_line(x86, A) == "A 3f2a; B unrecorded: not known to be the same"
    assert arithmetic_line(with_arithmetic(A, ""), x86) == (
        "A unrecorded; B 3f2a: not known to be the same")  # an empty cell of curves.csv


def test_the_command_reads_the_arithmetic_column(tmp_path, capsys):
    a, b, none = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "none.csv"
    a.write_text(curves_csv(with_arithmetic(A, "3f2a")))
    b.write_text(curves_csv(with_arithmetic(A, "9c1e")))
    none.write_text(curves_csv(A))
    assert main(["replicate", str(a), str(b)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("A 3f2a; B 9c1e: different")
    assert main(["replicate", str(a), str(a)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("the same")
    assert main(["replicate", str(a), str(none)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        "B unrecorded: not known to be the same")


def test_the_command_counts_uncorrected_claims_on_request(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(curves_csv(NEAR))
    b.write_text(curves_csv(SHARP))
    assert main(["replicate", str(a), str(b)]) == 0
    assert "claims in A: 0;" in capsys.readouterr().out
    assert main(["replicate", str(a), str(b), "--uncorrected"]) == 0
    out = capsys.readouterr().out
    assert "claims in A: 1; held in B: 1" in out and "95% each, uncorrected" in out


@pytest.mark.skipif(not REPLICATION.exists(), reason="no ../shared/replication here")
def test_the_committed_report_against_another_machines():
    """The 3-seed report of the protocol before per-seed calibration (committed then, kept in
    benchmarks/replication/) against a fresh clone's of it on another CPU."""
    from sparsebench.report.tables import read_curves_csv

    ours = read_curves_csv((ROOT / "benchmarks" / "replication" / "seeds-0-2.curves.csv")
                           .read_text())
    theirs = read_curves_csv(REPLICATION.read_text())
    counts = ("pairs", "claims_a", "held", "reversed", "lost", "new")
    uncorrected = compare(ours, theirs, corrected=False)
    assert [uncorrected[k] for k in counts] == [201, 141, 130, 0, 11, 15]
    corrected = compare(ours, theirs)
    assert [corrected[k] for k in counts] == [201, 20, 11, 0, 9, 21]
    claims = pair_claims(ours), pair_claims(ours, corrected=False)
    assert all(claims[1][k] == s for k, s in claims[0].items() if s != 0)
    assert summary_lines(corrected)[-1].endswith("not known to be the same")  # no digests yet


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
