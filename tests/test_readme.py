"""The README's results table is the report's (`sparsebench.report.readme`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sparsebench.pipeline.cli import main
from sparsebench.report.readme import BEGIN, END, results_block, update
from sparsebench.report.stats import levels_of
from sparsebench.report.tables import read_curves_csv
from sparsebench.util.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_readme_shows_the_committed_report():
    assert not update(ROOT / "README.md", ROOT / "reports" / "curves.csv", check=True), (
        "README.md's results differ from reports/curves.csv: run sparsebench readme")


@pytest.fixture
def copies(tmp_path):
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copy(ROOT / "reports" / "curves.csv", tmp_path / "curves.csv")
    return tmp_path / "README.md", tmp_path / "curves.csv"


def test_one_edited_figure_fails_the_check_and_readme_writes_it_back(copies, capsys):
    readme, report = copies
    update(readme, report)  # the block as the report makes it, whatever the committed one says
    text = readme.read_text()
    block = text[text.index(BEGIN):text.index(END)]
    row = next(line for line in block.splitlines() if line.startswith("| admm |"))
    first = row.split(" | ")[1]  # "98.29 ± 0.02"
    edited = row.replace(first, f"{float(first.split()[0]) + 0.01:.2f} ± 0.02", 1)
    readme.write_text(text.replace(row, edited))
    args = ["readme", "--readme", str(readme), "--report", str(report)]
    assert main([*args, "--check"]) == 1
    assert "differ from" in capsys.readouterr().err
    assert readme.read_text() != text  # --check writes nothing
    assert main(args) == 0
    assert readme.read_text() == text
    assert main([*args, "--check"]) == 0


def test_a_readme_without_its_markers_or_a_missing_report_is_refused(copies, capsys):
    readme, report = copies
    readme.write_text(readme.read_text().replace(END, ""))
    with pytest.raises(UsageError, match="lacks the markers"):
        update(readme, report)
    args = ["readme", "--readme", str(readme), "--report", str(report.with_name("none.csv"))]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err


def row(method: str, level: float, seed: int, acc: float, **extra) -> dict:
    return {"method": method, "level": level, "level_sparsity": 1 - 1 / level, "seed": seed,
            "test_accuracy": acc, "sparsity": 1 - 1 / level, "compression": level,
            "flop_speedup": level, "epochs": 10, "train_seconds": 1.0, "interpolated": False,
            **extra}


# 8x, 3 seeds, binary fractions: gmp = magnitude + 0.125 and admm = gmp + 0.0625 exactly (p 0);
# random is far below but noisy: paired p 0.049 (admm), 0.063 (gmp), 0.118 (magnitude), which
# Holm over the 6 pairs makes 3 · 0.049 = 0.147 for all three; grda is interpolated
ACCURACIES = {"magnitude": [0.5, 0.625, 0.5625], "gmp": [0.625, 0.75, 0.6875],
              "admm": [0.6875, 0.8125, 0.75], "random": [0.25, 0.5, 0.0625]}


def hand_rows() -> list[dict]:
    rows = [row("dense", 1.0, s, 0.875) for s in range(3)]
    rows += [row(m, 8.0, s, acc) for m, accs in ACCURACIES.items() for s, acc in enumerate(accs)]
    return rows + [row("grda", 8.0, s, 0.8, interpolated=True) for s in range(3)]


def test_the_block_says_who_wins_where_from_the_corrected_claims():
    block = results_block(hand_rows())
    intro, line = block.split("\n\nWho wins where: ")[1].split("\n\n")
    assert "Holm-corrected over the level's pairs (family-wise 0.05)" in intro
    assert "(3 seeds; every pair and its p-value: `reports/comparisons.csv`)." in intro
    # admm leads; random is not separated from it, gmp and magnitude are: groups by the
    # leader, not by neighbours (random ≈ magnitude too, but magnitude < gmp < admm)
    assert line == ("- **8x**: 1: admm 75.00, random 27.08 · 2: gmp 68.75 · 3: magnitude 56.25"
                    " · not compared: grda* 80.00. Above magnitude: admm, gmp; below: none. "
                    "Above gmp: admm; below: magnitude.")
    assert "| admm | 75.00 ± 6.25 |" in block  # the table is still there, above


def test_the_committed_reports_block_has_a_claims_line_per_level():
    rows = read_curves_csv((ROOT / "reports" / "curves.csv").read_text())
    block = results_block(rows)
    assert block.count("Who wins where: ") == 1
    lines = [line for line in block.splitlines() if line.startswith("- **")]
    assert [line.split("**")[1] for line in lines] == [
        f"{level:g}x" for level in levels_of(rows)]
    assert all(": 1: " in line and " Above magnitude: " in line and " Above gmp: " in line
               for line in lines)
