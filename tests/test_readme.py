"""The README's results table is the report's (`sparsebench.report.readme`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sparsebench.pipeline.cli import main
from sparsebench.report.readme import BEGIN, END, update
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
