"""The accuracy-vs-compression report: tables (markdown), the runs (CSV) and the headline plot.

`write_curves_report` writes, each file whole, all of them before the first is renamed in
(`sparsebench.util.paths.atomic_write_many`: an error while writing changes none):

- ``curves.csv``: one row per (method, level, seed), columns `stats.CSV_COLUMNS` then extras;
- ``curves.md``: dense's accuracy, the epoch budget, one table per level with the corrected
  differences to ``magnitude`` and ``gmp``, the groups per level, and a per-method summary
  (area under the curve, highest compression within 0.5 and 1.0 pp of dense);
- ``comparisons.csv``: every pair of methods per level (`stats.comparisons`: Holm-adjusted);
- ``plots/accuracy_vs_compression.png``: test accuracy against compression, log2 axis;
- ``plots/accuracy_vs_compression.csv``: the per-(method, level) means, for ``dvc plots``.

Interpolated points (`curves` explains them) are marked ``*`` in every table and drawn hollow.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from sparsebench.report.record import column_types
from sparsebench.report.stats import (
    ALPHA,
    CSV_COLUMNS,
    DENSE,
    area_under_curve,
    comparisons,
    find_summary,
    groups,
    levels_of,
    max_compression_within,
    summarize,
    validate_rows,
)
from sparsebench.util.paths import atomic_write_many

BASELINES = ("magnitude", "gmp")
"""The methods every other one is compared with, seed by seed, in the per-level tables."""

WITHIN_POINTS = (0.5, 1.0)
"""Allowed drops from dense (percentage points) for the "highest compression within" columns."""

MARK = "*"
"""The marker of a value built from interpolated rows."""

_MINUS = "\u2212"  # a typographic minus in the differences: "+0.12 [−0.05, +0.29]"

_BOOL_TEXT = {True: "true", False: "false"}

_CSV_TYPES = column_types()  # the numeric columns, to read curves.csv back


# --------------------------------------------------------------------------- CSV


def csv_columns(rows: Iterable[dict[str, Any]], extra: Sequence[str] | None = None) -> list[str]:
    """`CSV_COLUMNS`, then ``extra`` if given, else every other key of the rows (first seen)."""
    if extra is None:
        extra = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in CSV_COLUMNS]
    return [*CSV_COLUMNS, *(k for k in extra if k not in CSV_COLUMNS)]


def _csv_value(value: Any) -> str:
    """Booleans as true/false, floats by ``repr`` (they read back to the same float)."""
    if isinstance(value, bool):
        return _BOOL_TEXT[value]
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else str(value)


def curves_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The run rows as CSV text, in ``columns`` order (default `csv_columns`).

    Raises:
        UsageError: on a bad row (`stats.validate_rows`).
    """
    rows = validate_rows(rows)
    columns = list(columns) if columns is not None else csv_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_value(row.get(c)) for c in columns] for row in rows)
    return buffer.getvalue()


def read_curves_csv(text: str) -> list[dict[str, Any]]:
    """Rows back from `curves_csv` text: the columns of `record.CurveRow` typed, others as
    strings.

    Raises:
        UsageError: a missing column or a bad value (`stats.validate_rows`); ValueError: a
            number or boolean that does not parse.
    """
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = dict(raw)
        for key, kind in _CSV_TYPES.items():
            if key not in row:
                continue
            if row[key] == "" and key not in CSV_COLUMNS:  # a column some rows lack
                row[key] = None
            elif kind is bool:
                row[key] = _flag(key, row[key])
            else:
                row[key] = kind(row[key])
        rows.append(row)
    return validate_rows(rows)


def _flag(key: str, text: str) -> bool:
    flag = {"true": True, "false": False}.get(text)
    if flag is None:
        raise ValueError(f"curves.csv: {key} {text!r}; allowed: true, false")
    return flag


# --------------------------------------------------------------------------- cells


def _signed(points: float) -> str:
    """``+0.12`` / ``−0.05``: two decimals, a typographic minus, the sign kept when the value
    rounds to 0 (an interval end at ``−0.00`` is below 0)."""
    return f"{points:+.2f}".replace("-", _MINUS)


def pct_cell(mean: float, std: float | None) -> str:
    """A fraction as ``98.10 ± 0.14`` (percent); ``98.10`` without a spread (None)."""
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def ratio_cell(mean: float, std: float | None) -> str:
    """A ratio as ``31.9x ± 0.2``; ``31.9x`` without a spread (None)."""
    return f"{mean:.1f}x" + ("" if std is None else f" ± {std:.1f}")


def plain_cell(mean: float, std: float | None) -> str:
    """``12.3 ± 0.4``; ``12.3`` without a spread (None)."""
    return f"{mean:.1f}" + ("" if std is None else f" ± {std:.1f}")


def cell(fmt: Callable[[float, float | None], str], s: dict[str, Any], metric: str) -> str:
    """``metric`` of the `stats.summarize` row ``s`` by ``fmt``: its mean ± std over the
    seeds, the value alone for one seed (a standard deviation of one value says nothing)."""
    return fmt(s[f"{metric}_mean"], s[f"{metric}_std"] if s["n"] > 1 else None)


def difference_cell(pair: dict[str, Any] | None, method: str) -> str:
    """A pair of `stats.comparisons` seen from ``method``, in pp: ``+0.66 (p 0.003, PoI
    100%)`` with Holm's adjusted p and the probability of improvement; ``(noise)`` when the
    corrected test does not separate the two; ``n/a`` for no pair (fewer than 2 common
    measured seeds)."""
    if pair is None:
        return "n/a"
    sign = 1 if pair["a"] == method else -1
    poi = pair["poi"] if sign == 1 else 1 - pair["poi"]
    text = (f"{_signed(100 * sign * pair['mean'])} (p {_p(pair['p_holm'])}, "
            f"PoI {100 * poi:.0f}%)")
    return text + (" (noise)" if pair["relation"] == "≈" else "")


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def pair_of(pairs: list[dict[str, Any]], x: str, y: str) -> dict[str, Any] | None:
    """The pair of ``x`` and ``y`` among `stats.comparisons`, either way round, or None."""
    return next((p for p in pairs if {p["a"], p["b"]} == {x, y}), None)


def _marked(text: str, interpolated: bool) -> str:
    return text + MARK if interpolated else text


def level_label(level: float) -> str:
    """``8x``, ``128x``; ``1.5x`` for a fractional level."""
    return f"{level:g}x"


# --------------------------------------------------------------------------- markdown


def dense_summary(summaries: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The summary of ``dense`` (its one level), or None when dense did not run."""
    return next((s for s in summaries if s["method"] == DENSE), None)


def _budget_lines(rows: list[dict[str, Any]], budget: int | None) -> list[str]:
    low, high = min(r["epochs"] for r in rows), max(r["epochs"] for r in rows)
    used = (f"every run used {low} epochs" if low == high else
            f"runs used {low}–{high} epochs (column `epochs` of curves.csv)")
    if budget is None:
        return [f"Epoch budget: none set; {used}."]
    over = sorted({r["method"] for r in rows if r["epochs"] > budget})
    line = f"Epoch budget: {budget} epochs per run; {used}."
    if over:
        line += f" **Over the budget:** {', '.join(over)}."
    return [line]


def _dense_line(dense: dict[str, Any] | None) -> str:
    if dense is None:
        return "Dense: not in these runs (no within-dense columns)."
    accuracy = cell(pct_cell, dense, "test_accuracy")
    what = "one seed" if dense["n"] == 1 else f"mean ± std over {dense['n']} seeds"
    return f"Dense (no pruning): test accuracy {accuracy} % ({what})."


LEVEL_HEADER = ["method", "seeds", "test acc (%)", "sparsity (%)", "compression",
                "off level (max %)", "FLOP speedup", "train (s)", "epochs",
                *(f"Δ vs {b} (pp)" for b in BASELINES)]


def level_table(rows: list[dict[str, Any]], summaries: list[dict[str, Any]],
                level: float, pairs: list[dict[str, Any]]) -> list[str]:
    """The markdown table of one level: one line per method, in the rows' method order."""
    lines = ["| " + " | ".join(LEVEL_HEADER) + " |", "|" + "---|" * len(LEVEL_HEADER)]
    for s in summaries:
        if s["level"] != level:
            continue
        interp = s["interpolated"]
        seeds = f"{s['n']} ({s['n_interpolated']} interp.)" if interp else str(s["n"])
        diffs = [("—" if s["method"] == b else
                  difference_cell(pair_of(pairs, s["method"], b), s["method"]))
                 for b in BASELINES]
        off = off_level(rows, s["method"], level)
        cells = [_marked(s["method"], interp), seeds,
                 _marked(cell(pct_cell, s, "test_accuracy"), interp),
                 cell(pct_cell, s, "sparsity"), cell(ratio_cell, s, "compression"),
                 "n/a" if off is None else f"{100 * off:.1f}",
                 cell(ratio_cell, s, "flop_speedup"), cell(plain_cell, s, "train_seconds"),
                 cell(plain_cell, s, "epochs"), *diffs]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def off_level(rows: list[dict[str, Any]], method: str, level: float) -> float | None:
    """The largest ``|compression / level - 1|`` of the method's measured (not interpolated)
    rows at ``level``, or None when every row is interpolated."""
    offs = [abs(float(r["compression"]) / level - 1) for r in rows
            if r["method"] == method and float(r["level"]) == level and not r["interpolated"]]
    return max(offs, default=None)


def groups_line(pairs: list[dict[str, Any]], summaries: list[dict[str, Any]],
                level: float) -> str:
    """``1: admm 98.29, grda 98.19 · 2: gmp 98.14 · 3: random 95.53`` (`stats.groups`);
    methods without a measured pair (interpolated) follow, marked."""
    here = {s["method"]: s for s in summaries if s["level"] == level}
    compared = {m for p in pairs for m in (p["a"], p["b"])}
    means = {m: s["test_accuracy_mean"] for m, s in here.items() if m in compared}
    parts = [f"{i}: " + ", ".join(f"{m} {100 * means[m]:.2f}" for m in group)
             for i, group in enumerate(groups(pairs, means), 1)]
    left = [f"{_marked(m, s['interpolated'])} {100 * s['test_accuracy_mean']:.2f}"
            for m, s in here.items() if m not in compared]
    if left:
        parts.append("not compared: " + ", ".join(left))
    return " · ".join(parts)


METHOD_HEADER = ["method", "AUC: mean acc over log2 compression (%)",
                 *(f"max compression within {p} pp of dense" for p in WITHIN_POINTS)]


def method_table(summaries: list[dict[str, Any]], levels: list[float]) -> list[str]:
    """Per method: the area under its curve over ``levels`` and how far it compresses
    within `WITHIN_POINTS` of dense's mean accuracy."""
    dense = dense_summary(summaries)
    lines = ["| " + " | ".join(METHOD_HEADER) + " |", "|" + "---|" * len(METHOD_HEADER)]
    for method in dict.fromkeys(s["method"] for s in summaries if s["method"] != DENSE):
        interp = any(s["interpolated"] for s in summaries if s["method"] == method)
        auc = area_under_curve(summaries, method, levels) if levels else None
        cells = [_marked(method, interp),
                 "n/a" if auc is None else _marked(f"{100 * auc:.2f}", interp)]
        for points in WITHIN_POINTS:
            best = (None if dense is None else
                    max_compression_within(summaries, method, dense["test_accuracy_mean"],
                                           points))
            cells.append("none" if dense is not None and best is None else
                         "n/a" if best is None else
                         _marked(level_label(best),
                                 find_summary(summaries, method, best)["interpolated"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def curves_markdown(rows: Iterable[dict[str, Any]], *, suite: str, budget: int | None) -> str:
    """The whole ``curves.md`` text.

    Raises:
        UsageError: on a bad row (`stats.validate_rows`), or no rows.
    """
    rows = validate_rows(rows)
    if not rows:
        raise ValueError("curves report: no rows")
    rows, series = split_progressive(rows)
    summaries = summarize(rows)
    levels = levels_of(summaries)
    if not levels:  # every pruned method is a series: no curve to compare on
        return "\n".join([
            f"# sparsebench: accuracy against compression, suite `{suite}`", "",
            _dense_line(dense_summary(summaries)), "",
            "No method is on the equal-budget curve: every pruned method of this suite runs "
            "as a progressive series (below).", "", *series_table(series)]) + "\n"
    seeds = sorted({s["n"] for s in summaries})
    lines = [
        f"# sparsebench: accuracy against compression, suite `{suite}`",
        "",
        _dense_line(dense_summary(summaries)),
        "",
        *_budget_lines(rows, budget),
        "",
        ("One seed: each run's value, no spread" if seeds == [1] else
         f"Mean ± sample standard deviation over {', '.join(map(str, seeds))} seeds") +
        "; test set. "
        "Level = the nominal compression ratio c (sparsity 1 − 1/c of the prunable weights); "
        "compression and sparsity are as achieved (numel / nonzeros); FLOP speedup = dense / "
        "nonzero multiply-adds; off level = the largest distance of a measured seed's "
        "compression from the level. Claims: every pair of methods at a level is tested by a "
        "paired Student-t test over their common measured seeds (interpolated rows left out), "
        "and the level's p-values are adjusted by Holm's method, so that the chance of any "
        f"false claim at a level is at most {ALPHA:g}. Δ = test accuracy minus the baseline's, "
        "paired by seed: mean in percentage points (p = Holm-adjusted p-value, PoI = "
        "probability of improvement: the share of (seed, baseline seed) pairs in which the "
        "method scores higher); (noise) when the adjusted p is at least "
        f"{ALPHA:g}; n/a with fewer than 2 common measured seeds. Groups: the best method "
        "by mean and every method the corrected tests do not separate from it, then the best "
        "of the rest, and so on (every pair: `comparisons.csv`).",
    ]
    if any(s["interpolated"] for s in summaries):
        lines += ["", f"Values marked {MARK} are built from interpolated points: a method that "
                  "cannot hit the level exactly is read off its measured curve, linearly in "
                  "log2 compression (the seeds column counts them); they are drawn hollow in "
                  "the plot."]
    for level in levels:
        pairs = comparisons(rows, level)
        lines += ["", f"## {level_label(level)} ({100 * (1 - 1 / level):.2f}% sparse)", "",
                  *level_table(rows, summaries, level, pairs), "",
                  f"Groups ({sum(p['relation'] != '≈' for p in pairs)} of {len(pairs)} pairs "
                  "separated): " + groups_line(pairs, summaries, level)]
    lines += [
        "",
        "## Per method",
        "",
        f"AUC = the area under the mean test accuracy against log2(level) over "
        f"{', '.join(map(level_label, levels))}, divided by the log2 span: a mean accuracy "
        "over the range in which each doubling of compression weighs the same (n/a when a "
        "level is missing). Max compression within x pp = the highest level whose mean test "
        "accuracy is at least dense's mean − x pp (none: no level is).",
        "",
        *method_table(summaries, levels),
    ]
    if series:
        lines += ["", *series_table(series)]
    return "\n".join(lines) + "\n"


def split_progressive(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                           list[dict[str, Any]]]:
    """(the equal-budget curve's rows, the progressive series' rows): a series is not on the
    curve, its budget being the sum of its steps."""
    series = [r for r in rows if r.get("progressive")]
    return [r for r in rows if not r.get("progressive")], series


def series_table(rows: list[dict[str, Any]]) -> list[str]:
    """The progressive series: each step from the previous step's model (Ye et al. 2018)."""
    lines = ["## Progressive series", "",
             "Each level starts from the previous level's pruned and retrained model of the "
             "same seed (the first from the pretrained one); epochs = the series' total up to "
             "that level (pretrain + every step so far), so these points are not on the "
             "equal-budget curve; training s = that step's own. One seed: its value, no "
             "spread.", "",
             "| method | level | seeds | test accuracy (%) | compression | epochs | "
             "training s |", "|---|---|---|---|---|---|---|"]
    for s in summarize(rows):
        lines.append(f"| {s['method']} | {level_label(s['level'])} | {s['n']} | "
                     f"{cell(pct_cell, s, 'test_accuracy')} | "
                     f"{cell(ratio_cell, s, 'compression')} | {s['epochs_mean']:.0f} | "
                     f"{cell(plain_cell, s, 'train_seconds')} |")
    return lines


# --------------------------------------------------------------------------- plot


COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:olive", "tab:cyan", "navy", "goldenrod", "tab:gray")
MARKERS = "osD^vPX*<>hp"  # 12 shapes: with the colours, 12 methods apart


def method_colour(key: str, keys: Sequence[str]) -> str:
    """The hex colour of method ``key`` in the plot, where ``keys`` are the suite's method keys
    in their order (dense black): MLflow's runs and charts take the same."""
    from matplotlib.colors import to_hex  # lazy: matplotlib, for the colours alone

    others = [k for k in keys if k != DENSE]
    return "#000000" if key not in others else to_hex(COLORS[others.index(key) % len(COLORS)])


PLOT_COLUMNS = ("method", "compression", "test_accuracy", "test_accuracy_std",
                "test_accuracy_min", "test_accuracy_max", "achieved_compression", "seeds",
                "interpolated")


def plot_table(summaries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-(method, level) means for ``dvc plots``: x ``compression`` (the nominal level; 1
    for dense), y ``test_accuracy`` (mean, a fraction), the spread and the achieved compression.
    """
    return [{"method": s["method"], "compression": s["level"],
             "test_accuracy": s["test_accuracy_mean"], "test_accuracy_std": s["test_accuracy_std"],
             "test_accuracy_min": s["test_accuracy_min"],
             "test_accuracy_max": s["test_accuracy_max"],
             "achieved_compression": s["compression_mean"], "seeds": s["n"],
             "interpolated": s["interpolated"]} for s in summaries]


COMPARISON_COLUMNS = ("level", "a", "b", "n", "mean", "std", "p", "p_holm", "poi", "relation")


def comparisons_csv(rows: list[dict[str, Any]]) -> str:
    """Every pair of `stats.comparisons` at every level, ``a`` ahead on the mean."""
    table = [{k: pair[k] for k in COMPARISON_COLUMNS}
             for level in levels_of(rows) for pair in comparisons(rows, level)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COMPARISON_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in table)
    return buffer.getvalue()


def _table_csv(table: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]) if table else PLOT_COLUMNS,
                            lineterminator="\n")  # no row: every run a series, the header
    writer.writeheader()
    writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in table)
    return buffer.getvalue()


def _draw_method(ax: Any, points: list[dict[str, Any]], label: str, index: int) -> None:
    """One method: the mean line, the min..max band, filled (measured) and hollow
    (interpolated) markers."""
    color, marker = COLORS[index % len(COLORS)], MARKERS[index % len(MARKERS)]
    xs = [s["level"] for s in points]
    ax.fill_between(xs, [100 * s["test_accuracy_min"] for s in points],
                    [100 * s["test_accuracy_max"] for s in points], color=color, alpha=0.15,
                    lw=0)
    ax.plot(xs, [100 * s["test_accuracy_mean"] for s in points], color=color, lw=1.4,
            marker=marker, ms=6, mfc=color, mec=color, label=label)
    hollow = [s for s in points if s["interpolated"]]
    if hollow:
        ax.plot([s["level"] for s in hollow], [100 * s["test_accuracy_mean"] for s in hollow],
                ls="none", marker=marker, ms=6, mfc="white", mec=color, mew=1.4)


OUTLIER_POINTS = 5.0
"""A method whose AUC is this many pp below the median method's is left out of the zoom panel."""


def outlier_methods(summaries: list[dict[str, Any]],
                    points: float = OUTLIER_POINTS) -> list[str]:
    """The methods whose area under the curve (`stats.area_under_curve` over every level) is
    more than ``points`` pp below the median method's, e.g. ``random``; a method without
    every level is never one."""
    levels = levels_of(summaries)
    methods = list(dict.fromkeys(s["method"] for s in summaries if s["method"] != DENSE))
    areas = {m: area_under_curve(summaries, m, levels) for m in methods} if levels else {}
    known = {m: a for m, a in areas.items() if a is not None}
    if len(known) < 3:
        return []
    median = statistics.median(known.values())
    return [m for m, a in known.items() if a < median - points / 100]


def _style_axes(ax: Any, levels: list[float], title: str) -> None:
    # lazy: matplotlib, for the plots alone
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(levels))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([level_label(level) for level in levels])
    ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))  # no "+9.8e1" offset
    ax.set_xlabel("compression of the prunable weights (level, log2 scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _draw_panel(ax: Any, summaries: list[dict[str, Any]], methods: list[str],
                shown: list[str]) -> None:
    """Dense's band and the ``shown`` methods (colours and markers by their place in
    ``methods``, so both panels agree)."""
    dense = dense_summary(summaries)
    if dense is not None:
        mean, std = 100 * dense["test_accuracy_mean"], 100 * dense["test_accuracy_std"]
        ax.axhspan(mean - std, mean + std, color="0.6", alpha=0.3, lw=0)
        ax.axhline(mean, color="k", ls="--", lw=1, label=f"dense ({dense['n']} seeds, ± std)")
    for i, method in enumerate(methods):
        if method in shown:
            _draw_method(ax, [s for s in summaries if s["method"] == method], method, i)


def plot_accuracy_vs_compression(summaries: list[dict[str, Any]]) -> bytes:
    """The headline figure as PNG bytes.

    Every method's mean test accuracy against the level (log2 axis), the min..max over seeds
    shaded, dense as a mean ± std band, interpolated points hollow. When `outlier_methods`
    (e.g. random) stretch the accuracy axis, a second panel shows the others alone.
    """
    from matplotlib.figure import Figure  # no pyplot: an Agg canvas, no global state
    from matplotlib.lines import Line2D  # lazy: matplotlib, for the plots alone

    methods = list(dict.fromkeys(s["method"] for s in summaries if s["method"] != DENSE))
    outliers = outlier_methods(summaries)
    levels = levels_of(summaries)
    fig = Figure(figsize=(12, 4.5) if outliers else (7.5, 4.5))
    axes = fig.subplots(1, 2 if outliers else 1, squeeze=False)[0]
    _draw_panel(axes[0], summaries, methods, methods)
    _style_axes(axes[0], levels, "all methods")
    if outliers:
        _draw_panel(axes[1], summaries, methods, [m for m in methods if m not in outliers])
        _style_axes(axes[1], levels, f"without {', '.join(outliers)} (AUC more than "
                                     f"{OUTLIER_POINTS:g} pp below the median method's)")
    handles, labels = axes[0].get_legend_handles_labels()
    if any(s["interpolated"] for s in summaries):
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="k"))
        labels.append("interpolated")
    axes[-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8,
                    title="line: mean over seeds\nband: min–max over seeds", title_fontsize=8,
                    frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


# --------------------------------------------------------------------------- the report


def write_curves_report(rows: Iterable[dict[str, Any]], out_dir: Path, *, suite: str,
                        budget: int | None, columns: Sequence[str] | None = None) -> list[Path]:
    """Write the curves report under ``out_dir`` (`atomic_write_many`: a failure while writing,
    a full disk, changes no file; a crash between the renames can leave some old ones).

    Args:
        rows: one dict per (method, level, seed) with the keys of `CSV_COLUMNS`.
        out_dir: e.g. ``reports``.
        suite: the suite's name, for the title.
        budget: the epoch budget per run, or None when there is none.
        columns: the columns of ``curves.csv`` (default `csv_columns`: every key of the rows).

    Returns:
        The paths written: curves.csv, curves.md, comparisons.csv, plots/accuracy_vs_compression.png
        and .csv.

    Raises:
        UsageError: a bad row, named with its key (nothing is written).
    """
    rows = validate_rows(rows)
    summaries = summarize(split_progressive(rows)[0])
    out_dir = Path(out_dir)
    files: dict[Path, bytes | str] = {
        out_dir / "curves.csv": curves_csv(rows, columns),
        out_dir / "curves.md": curves_markdown(rows, suite=suite, budget=budget),
        out_dir / "comparisons.csv": comparisons_csv(split_progressive(rows)[0]),
        out_dir / "plots" / "accuracy_vs_compression.csv": _table_csv(plot_table(summaries)),
        out_dir / "plots" / "accuracy_vs_compression.png": plot_accuracy_vs_compression(
            summaries),
    }
    atomic_write_many(files)
    return list(files)
