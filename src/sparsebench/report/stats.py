"""Accuracy-vs-compression curves: the statistics behind `curves_report` (no torch, no MLflow).

A *run* is one (method, level, seed). A *level* is a nominal compression ratio ``c`` (8, 16,
32, ...; sparsity ``1 - 1/c``); ``dense`` has no level and stands at ``level = 1.0``. The input
is a list of row dicts, one per run, with the keys of `CSV_COLUMNS` (extra keys are carried
along). Accuracies, sparsities and their differences are fractions here; the report turns them
into percent and percentage points (pp).

Points that a regularisation-driven method (grda, linbreg, adabreg, proxsgd) cannot hit exactly
are interpolated between the two runs that bracket the level (`report.rows.curve_rows`) and carry
``interpolated=True``; every summary built from such a row keeps the flag.

Seeds are paired: two methods run with the same seed share the data order and the dense
pretraining, so `paired_difference` compares them seed by seed and puts a Student-t interval on
the mean difference.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from sparsebench.report.record import required_columns
from sparsebench.util.errors import UsageError

DENSE = "dense"

CSV_COLUMNS: list[str] = required_columns()
"""The columns every row has, in the order of ``reports/curves.csv`` (`record.CurveRow`);
any further keys of the rows follow."""

SUMMARY_METRICS: tuple[str, ...] = (
    "test_accuracy", "sparsity", "compression", "flop_speedup", "train_seconds", "epochs",
)
"""The metrics `summarize` gives a mean and a sample standard deviation of."""

_TOLERANCE = 1e-9  # float slack for "mean >= dense - points / 100" (0.985 - 0.005 != 0.98)


# --------------------------------------------------------------------------- validation


def row_label(row: dict[str, Any]) -> str:
    """``(method='admm', level=8.0, seed=0)``: how errors name a row (``?`` for a missing key)."""
    parts = (f"{key}={row[key]!r}" if key in row else f"{key}=?"
             for key in ("method", "level", "seed"))
    return f"({', '.join(parts)})"


def _bad(row: dict[str, Any], key: str, why: str) -> UsageError:
    return UsageError(f"curves row {row_label(row)}: key {key!r}: {why}")


def _number(row: dict[str, Any], key: str, low: float, high: float = math.inf,
            *, low_open: bool = False) -> float:
    """``row[key]`` as a finite float in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(row, key, f"{value!r} is not a number")
    value = float(value)
    left = "(" if low_open else "["
    allowed = f"a finite number in {left}{low:g}, {high:g}]"
    if not math.isfinite(value):
        raise _bad(row, key, f"{value!r} is not finite; allowed: {allowed}")
    if value < low or (low_open and value == low) or value > high:
        raise _bad(row, key, f"{value!r} is out of range; allowed: {allowed}")
    return value


def _integer(row: dict[str, Any], key: str, low: int) -> int:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(row, key, f"{value!r} is not an integer >= {low}")
    return value


def validate_row(row: dict[str, Any]) -> None:
    """Check one row: every key of `CSV_COLUMNS` present and its value sane.

    ``method`` a non-empty string; ``level`` >= 1 and ``level_sparsity`` = 1 - 1/level (to
    1e-6); ``seed`` and ``epochs`` integers >= 0; ``test_accuracy`` and ``sparsity`` in [0, 1];
    ``compression`` >= 1; ``flop_speedup`` > 0; ``train_seconds`` >= 0; every number finite;
    ``interpolated`` a bool.

    Raises:
        UsageError: (a ValueError) naming the row (method, level, seed), the key and the value.
    """
    missing = [key for key in CSV_COLUMNS if key not in row]
    if missing:
        raise _bad(row, missing[0], "missing" + (f" (also {', '.join(missing[1:])})"
                                                 if len(missing) > 1 else ""))
    if not isinstance(row["method"], str) or not row["method"]:
        raise _bad(row, "method", f"{row['method']!r} is not a method name")
    level = _number(row, "level", 1.0)
    level_sparsity = _number(row, "level_sparsity", 0.0, 1.0)
    if abs(level_sparsity - (1 - 1 / level)) > 1e-6:
        raise _bad(row, "level_sparsity", f"{level_sparsity!r} is not 1 - 1/level "
                                          f"= {1 - 1 / level!r}")
    _integer(row, "seed", 0)
    _number(row, "test_accuracy", 0.0, 1.0)
    _number(row, "sparsity", 0.0, 1.0)
    _number(row, "compression", 1.0)
    _number(row, "flop_speedup", 0.0, low_open=True)
    _integer(row, "epochs", 0)
    _number(row, "train_seconds", 0.0)
    if not isinstance(row["interpolated"], bool):
        raise _bad(row, "interpolated", f"{row['interpolated']!r} is not true/false")


def validate_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check every row (`validate_row`) and that no (method, level, seed) comes twice.

    Returns:
        The rows, as a list.

    Raises:
        UsageError: (a ValueError) naming the first bad row and key.
    """
    rows = list(rows)
    seen: set[tuple[str, float, int]] = set()
    for row in rows:
        validate_row(row)
        run = (row["method"], float(row["level"]), row["seed"])
        if run in seen:
            raise _bad(row, "seed", "the same (method, level, seed) comes twice")
        seen.add(run)
    return rows


# --------------------------------------------------------------------------- summaries


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _groups(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Rows by (method, level): methods in first-seen order, levels ascending."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], float(row["level"])), []).append(row)
    order = {method: i for i, method in enumerate(dict.fromkeys(m for m, _ in groups))}
    return dict(sorted(groups.items(), key=lambda item: (order[item[0][0]], item[0][1])))


def summarize(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (method, level), over its seeds.

    Args:
        rows: run rows (validated here).

    Returns:
        Dicts in method first-seen order, levels ascending, with ``method``, ``level``,
        ``level_sparsity``, ``n`` (seeds), ``seeds`` (sorted), ``interpolated`` (any row is),
        ``n_interpolated``, ``test_accuracy_min`` / ``_max``, and for every metric of
        `SUMMARY_METRICS` ``<metric>_mean`` and ``<metric>_std`` (sample std, 0 for n = 1).

    Raises:
        UsageError: on a bad row (see `validate_rows`).
    """
    summaries = []
    for (method, level), group in _groups(validate_rows(rows)).items():
        summary: dict[str, Any] = {
            "method": method, "level": level, "level_sparsity": 1 - 1 / level,
            "n": len(group), "seeds": sorted(r["seed"] for r in group),
            "interpolated": any(r["interpolated"] for r in group),
            "n_interpolated": sum(r["interpolated"] for r in group),
        }
        for metric in SUMMARY_METRICS:
            mean, std = _mean_std([float(r[metric]) for r in group])
            summary[f"{metric}_mean"], summary[f"{metric}_std"] = mean, std
        accuracies = [r["test_accuracy"] for r in group]
        summary["test_accuracy_min"], summary["test_accuracy_max"] = (
            min(accuracies), max(accuracies))
        summaries.append(summary)
    return summaries


def find_summary(summary_rows: Iterable[dict[str, Any]], method: str,
                 level: float) -> dict[str, Any] | None:
    """The summary of ``method`` at ``level``, or None."""
    return next((s for s in summary_rows
                 if s["method"] == method and s["level"] == float(level)), None)


def levels_of(rows: Iterable[dict[str, Any]]) -> list[float]:
    """The distinct levels of every method but dense, ascending (rows or summaries)."""
    return sorted({float(r["level"]) for r in rows if r["method"] != DENSE})


# --------------------------------------------------------------------------- paired differences


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t quantile ``t_{(1 + confidence) / 2, df}``.

    scipy (a declared dependency) is imported here, lazily.

    Raises:
        ValueError: confidence outside (0, 1) or df < 1.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence!r} is out of range; allowed: (0, 1)")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom {df!r}; allowed: an integer >= 1")
    from scipy.stats import t

    return float(t.ppf((1 + confidence) / 2, df))


def _accuracy_by_seed(rows: Iterable[dict[str, Any]], method: str,
                      level: float) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in rows if r["method"] == method and r["level"] == float(level)}


def paired_difference(rows: Iterable[dict[str, Any]], method: str, baseline: str, level: float,
                      confidence: float = 0.95, *,
                      baseline_level: float | None = None) -> dict[str, Any] | None:
    """Test accuracy of ``method`` minus ``baseline`` at ``level``, paired by seed.

    Over the seeds both have, the differences ``d_s = acc(method, s) - acc(baseline, s)`` give
    the mean ``d̄``, the sample std ``s_d`` and the interval ``d̄ ± t_{(1+confidence)/2, n-1}
    · s_d / √n``. The difference is *within noise* when that interval holds 0.

    Args:
        rows: run rows (validated here).
        method: the method key.
        baseline: the method it is compared with (e.g. ``magnitude``).
        level: the nominal compression ratio of the level.
        confidence: of the two-sided interval.
        baseline_level: the baseline's level if not ``level`` (e.g. 1.0 for dense).

    Returns:
        ``method``, ``baseline``, ``level``, ``n``, ``seeds``, ``mean``, ``std``, ``low``,
        ``high``, ``confidence``, ``within_noise`` and ``interpolated`` (a paired row is);
        fractions, not percent. None when fewer than 2 seeds are common (no spread to judge
        by): tables show "n/a".

    Raises:
        UsageError: on a bad row; ValueError on a bad confidence.
    """
    rows = validate_rows(rows)
    ours = _accuracy_by_seed(rows, method, level)
    theirs = _accuracy_by_seed(rows, baseline, level if baseline_level is None
                               else baseline_level)
    seeds = sorted(set(ours) & set(theirs))
    if len(seeds) < 2:
        return None
    diffs = [ours[s]["test_accuracy"] - theirs[s]["test_accuracy"] for s in seeds]
    mean, std = _mean_std(diffs)
    half = t_quantile(confidence, len(seeds) - 1) * std / math.sqrt(len(seeds))
    low, high = mean - half, mean + half
    return {
        "method": method, "baseline": baseline, "level": float(level), "n": len(seeds),
        "seeds": seeds, "mean": mean, "std": std, "low": low, "high": high,
        "confidence": confidence, "within_noise": low <= 0 <= high,
        "interpolated": any(ours[s]["interpolated"] or theirs[s]["interpolated"]
                            for s in seeds),
    }


def relation(difference: dict[str, Any] | None) -> str:
    """``>`` (interval above 0), ``<`` (below), ``≈`` (holds 0) or ``?`` (no difference)."""
    if difference is None:
        return "?"
    if difference["within_noise"]:
        return "≈"
    return ">" if difference["low"] > 0 else "<"


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the i-th smallest of m is multiplied by
    ``m - i + 1`` (i from 1), made non-decreasing and capped at 1. Rejecting where the adjusted
    p is below alpha holds the chance of any false claim in the family at most alpha, under any
    dependence between the tests."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def probability_of_improvement(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """Over every pair of a seed of ours and a seed of theirs, the share where ours scores
    higher (a tie counts a half): P(X > Y) estimated as in Agarwal et al. 2021."""
    wins = sum((x > y) + 0.5 * (x == y) for x in ours for y in theirs)
    return wins / (len(ours) * len(theirs))


def _paired_p(mean: float, std: float, n: int) -> float:
    """The two-sided p-value of a paired Student-t test of a zero mean difference."""
    if std == 0:
        return 1.0 if mean == 0 else 0.0
    from scipy.stats import t

    return float(2 * t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))


ALPHA = 0.05
"""The family-wise error rate of each level's claims (`comparisons`)."""


def comparisons(rows: Iterable[dict[str, Any]], level: float,
                alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Every pair of methods at ``level``, tested with error control over the level's pairs.

    Interpolated rows are left out (a claim stands on measured runs only); a pair needs two
    common seeds. Each pair ``(a, b)`` (a ahead on the mean over their common seeds) gets the
    paired difference over those seeds (``mean``, ``std``, ``n``), the two-sided p of a paired
    Student-t test, ``p_holm`` (`holm` over every pair of the level), ``poi``
    (`probability_of_improvement` of a over b, over all their seeds) and ``relation``: ``>``
    where ``p_holm < alpha``, else ``≈``.

    Why paired tests corrected by Holm, not a pooled block design (Tukey's HSD): the seed-to-
    seed spread differs by a factor of 5-20 between methods at the highest levels (random), so
    a pooled variance is too wide for the methods that share their pretraining and too narrow
    for random; each pair's own variance needs no such assumption (see the
    replication figures in docs/benchmarks.md for the seed count this takes).
    """
    measured = [r for r in validate_rows(rows) if not r["interpolated"]
                and r["method"] != DENSE and float(r["level"]) == float(level)]
    by: dict[str, dict[int, float]] = {}
    for r in measured:
        by.setdefault(r["method"], {})[r["seed"]] = float(r["test_accuracy"])
    means = {m: statistics.fmean(v.values()) for m, v in by.items()}
    pairs = []
    for a, b in itertools.combinations(sorted(by, key=lambda m: (-means[m], m)), 2):
        seeds = sorted(set(by[a]) & set(by[b]))
        if len(seeds) < 2:
            continue
        mean, std = _mean_std([by[a][s] - by[b][s] for s in seeds])
        if mean < 0:  # ahead on the common seeds decides the order, not the own means
            a, b, mean = b, a, -mean
        pairs.append({"level": float(level), "a": a, "b": b, "n": len(seeds), "mean": mean,
                      "std": std, "p": _paired_p(mean, std, len(seeds)),
                      "poi": probability_of_improvement(list(by[a].values()),
                                                        list(by[b].values()))})
    for pair, adjusted in zip(pairs, holm([p["p"] for p in pairs]), strict=True):
        pair["p_holm"] = adjusted
        pair["relation"] = ">" if adjusted < alpha else "≈"
    return pairs


def groups(pairs: list[dict[str, Any]], means: dict[str, float]) -> list[list[str]]:
    """The methods in groups that the claims support: the best (by mean) and every method not
    separated from it (`comparisons`), then the best of the rest and those not separated from
    it, and so on. A method is placed by its comparison with each group's leader alone, so
    one pair crossing the threshold moves one method, not the whole order."""
    separated = {frozenset((p["a"], p["b"])) for p in pairs if p["relation"] != "≈"}
    compared = {frozenset((p["a"], p["b"])) for p in pairs}
    rest = sorted(means, key=lambda m: (-means[m], m))
    found = []
    while rest:
        leader = rest[0]
        group = [m for m in rest if m == leader or (frozenset((leader, m)) in compared
                                                      and frozenset((leader, m)) not in separated)]
        found.append(group)
        rest = [m for m in rest if m not in group]
    return found


# --------------------------------------------------------------------------- curve figures


def area_under_curve(summary_rows: Iterable[dict[str, Any]], method: str,
                     levels: Iterable[float]) -> float | None:
    """The mean test accuracy of ``method`` over a range of compression, on a log2 scale.

    With ``x = log2(level)`` and ``y`` the mean test accuracy (over seeds) at each of
    ``levels``, the area under the piecewise-linear curve (trapezoid rule) divided by
    ``x_max - x_min``. So it is a fraction like an accuracy: a constant curve at 0.97 gives
    0.97, and each doubling of compression weighs the same. One level gives its accuracy.

    Returns:
        The normalised area, or None when ``method`` lacks a summary at any of ``levels``.

    Raises:
        ValueError: no levels.
    """
    xs = sorted({float(level) for level in levels})
    if not xs:
        raise ValueError("area_under_curve: no levels given")
    summaries = list(summary_rows)
    points = [find_summary(summaries, method, level) for level in xs]
    if any(p is None for p in points):
        return None
    ys = [p["test_accuracy_mean"] for p in points]
    if len(xs) == 1:
        return ys[0]
    logs = [math.log2(x) for x in xs]
    area = sum((logs[i + 1] - logs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))
    return area / (logs[-1] - logs[0])


def max_compression_within(summary_rows: Iterable[dict[str, Any]], method: str,
                           dense_accuracy: float, points: float) -> float | None:
    """The highest level whose mean test accuracy is within ``points`` pp of dense.

    Within means ``mean >= dense_accuracy - points / 100``. The level counts whether or not
    the levels below it do (the curve need not fall monotonically).

    Args:
        summary_rows: `summarize` output.
        method: the method key.
        dense_accuracy: dense's mean test accuracy (a fraction).
        points: the allowed drop in percentage points (e.g. 0.5, 1.0).

    Returns:
        The level (nominal compression ratio), or None if no level is within.
    """
    threshold = dense_accuracy - points / 100
    within = [s["level"] for s in summary_rows
              if s["method"] == method and s["test_accuracy_mean"] >= threshold - _TOLERANCE]
    return max(within, default=None)
