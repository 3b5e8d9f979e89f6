"""The README's results, written from the report: the block between `BEGIN` and `END` in
README.md is the table and the corrected claims of `results_block`, made from
``reports/curves.csv``, so the README and the report cannot disagree (``sparsebench readme``
rewrites it; ``--check`` and the tests refuse a README whose block differs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsebench.report.stats import (
    ALPHA,
    DENSE,
    area_under_curve,
    comparisons,
    find_summary,
    levels_of,
    max_compression_within,
    summarize,
)
from sparsebench.report.tables import (
    BASELINES,
    MARK,
    WITHIN_POINTS,
    cell,
    dense_summary,
    groups_line,
    level_label,
    pct_cell,
    read_curves_csv,
    split_progressive,
)
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import atomic_write

BEGIN = "<!-- results: written by `sparsebench readme` from reports/curves.csv -->"
END = "<!-- results: end -->"


def results_block(rows: list[dict[str, Any]]) -> str:
    """The test accuracy of every method per level (mean ± std over the seeds), its area
    under the curve and its reach within `WITHIN_POINTS` of dense, best AUC first."""
    summaries = summarize(rows)
    levels = levels_of(summaries)
    dense = dense_summary(summaries)
    methods = list(dict.fromkeys(s["method"] for s in summaries if s["method"] != DENSE))
    table = [_method_row(summaries, m, levels, dense) for m in methods]
    table.sort(key=lambda r: (r[0] is None, -(r[0] or 0.0)))
    header = ["method", *map(level_label, levels), "AUC",
              " / ".join(f"{p:.1f}" for p in WITHIN_POINTS).join(
                  ["max compression within ", " pp of dense"])]
    return "\n".join([_intro(rows, dense), "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(cells) + " |" for _, cells in table),
                      "", *claims_lines(split_progressive(rows)[0], summaries, levels)])


def claims_lines(rows: list[dict[str, Any]], summaries: list[dict[str, Any]],
                 levels: list[float]) -> list[str]:
    """Who wins where, from the corrected claims alone (`stats.comparisons`): per level the
    groups, and the methods the tests put above or below each baseline."""
    measured = {r["seed"] for r in rows if not r["interpolated"]}
    lines = [f"Who wins where: each pair of methods at a level by a paired Student-t test over "
             f"the seeds, Holm-corrected over the level's pairs (family-wise {ALPHA:g}); a "
             "group is the best method left and every method not separated from it "
             f"({len(measured)} seeds; every pair and its p-value: `reports/comparisons.csv`)."
             , ""]
    for level in levels:
        pairs = comparisons(rows, level)
        text = f"- **{level_label(level)}**: {groups_line(pairs, summaries, level)}."
        for base in BASELINES:
            above = [p["a"] for p in pairs if p["b"] == base and p["relation"] == ">"]
            below = [p["b"] for p in pairs if p["a"] == base and p["relation"] == ">"]
            text += (f" Above {base}: {', '.join(above) or 'none'}; below: "
                     f"{', '.join(below) or 'none'}.")
        lines.append(text)
    return lines


def _intro(rows: list[dict[str, Any]], dense: dict[str, Any] | None) -> str:
    seeds = ", ".join(map(str, sorted({r["seed"] for r in rows})))
    epochs = sorted({r["epochs"] for r in rows if r["method"] != DENSE})
    budget = f"{epochs[0]} epochs a run" if len(epochs) == 1 else (
        f"{epochs[0]}-{epochs[-1]} epochs a run")
    reference = "" if dense is None else f" (dense: {cell(pct_cell, dense, 'test_accuracy')})"
    return (f"Test accuracy (%), mean ± std over seeds {seeds}, {budget}{reference}; "
            f"`{MARK}` interpolated, `-` the level is out of the method's reach:")


def _method_row(summaries: list[dict[str, Any]], method: str, levels: list[float],
                dense: dict[str, Any] | None) -> tuple[float | None, list[str]]:
    cells = [method]
    for level in levels:
        s = find_summary(summaries, method, level)
        cells.append("-" if s is None else cell(pct_cell, s, "test_accuracy")
                     + (MARK if s["interpolated"] else ""))
    interpolated = any(s["interpolated"] for s in summaries if s["method"] == method)
    auc = area_under_curve(summaries, method, levels)
    cells.append("n/a" if auc is None else f"{100 * auc:.2f}" + (MARK if interpolated else ""))
    reach = [None if dense is None else max_compression_within(
        summaries, method, dense["test_accuracy_mean"], points) for points in WITHIN_POINTS]
    cells.append(" / ".join("none" if r is None else level_label(r) for r in reach))
    return auc, cells


def update(readme: Path, report: Path, *, check: bool = False) -> bool:
    """Write `results_block` of ``report`` (a curves.csv) between the markers of ``readme``;
    with ``check``, write nothing. Returns whether the README was (or would be) changed.

    Raises:
        UsageError: a file missing, or the README without both markers in order.
    """
    for path in (readme, report):
        if not path.is_file():
            raise UsageError(f"readme: {str(path)!r} does not exist; allowed: the README and "
                             "the report's curves.csv (run dvc repro first)")
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise UsageError(f"readme: {str(readme)!r} lacks the markers {BEGIN!r} and {END!r} "
                         "(in that order); allowed: a README with both")
    block = results_block(read_curves_csv(report.read_text()))
    new = f"{text[:start]}{BEGIN}\n{block}\n{text[end:]}"
    if new != text and not check:
        atomic_write(readme, new)
    return new != text
