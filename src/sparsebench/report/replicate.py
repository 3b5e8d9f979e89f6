"""Do two reports make the same claims? (``sparsebench replicate A.csv B.csv``)

A claim is a pair of methods at a level that the report's corrected tests separate (`stats.
comparisons`: paired Student-t, Holm over the level's pairs; interpolated points left out): its
sign says which is ahead. ``corrected=False`` counts instead every pair whose 95% paired
interval excludes zero on its own (`stats.paired_difference`), as the report did before.
Report B replicates report A's claims when B makes them too; `compare` counts those held,
reversed (B separates the pair the other way), lost (B does not separate it), the new ones B
makes and A does not, and how far each (method, level) cell's mean moved, in units of the
standard error of the difference of the two means.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from sparsebench.report.stats import DENSE, comparisons, levels_of, paired_difference, summarize
from sparsebench.util.errors import UsageError


def pair_claims(rows: list[dict[str, Any]], corrected: bool = True
                ) -> dict[tuple[float, str, str], int]:
    """(level, method, other) -> +1 (ahead), -1 (behind) or 0 (within noise), for every pair
    of methods measured at the level on at least two common seeds (method before other by
    name)."""
    measured = [r for r in rows if not r["interpolated"] and r["method"] != DENSE]
    claims = {}
    for level in levels_of(measured):
        if corrected:
            for p in comparisons(measured, level):
                a, b = sorted((p["a"], p["b"]))
                ahead = 0 if p["relation"] == "≈" else (1 if a == p["a"] else -1)
                claims[(level, a, b)] = ahead
            continue
        methods = sorted({r["method"] for r in measured if r["level"] == level})
        for a, b in itertools.combinations(methods, 2):
            d = paired_difference(measured, a, b, level)
            if d is not None:
                claims[(level, a, b)] = 0 if d["within_noise"] else (1 if d["mean"] > 0 else -1)
    return claims


def _check_comparable(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    for name, rows in (("A", a), ("B", b)):
        if len({r["seed"] for r in rows}) < 2:
            raise UsageError(f"replicate: report {name} has one seed; a claim needs at least 2 "
                             "seeds (a spread to judge a difference by)")
    for what, key in (("methods", "method"), ("levels", "level")):
        ours, theirs = ({r[key] for r in rows} for rows in (a, b))
        if ours != theirs:
            only = sorted(map(str, ours - theirs)), sorted(map(str, theirs - ours))
            raise UsageError(f"replicate: the reports' {what} differ (only in A: "
                             f"{', '.join(only[0]) or 'none'}; only in B: "
                             f"{', '.join(only[1]) or 'none'}); allowed: two reports of one "
                             "suite")


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]], corrected: bool = True
            ) -> dict[str, Any]:
    """Report B's claims against report A's, and the cells' movement (see the module).

    Raises:
        UsageError: reports of different methods or levels (other suites), or of one seed.
    """
    _check_comparable(a, b)
    ca, cb = pair_claims(a, corrected), pair_claims(b, corrected)
    made = [k for k, s in ca.items() if s != 0]
    counts = {"corrected": corrected, "pairs": len(ca), "claims_a": len(made),
              "held": sum(cb.get(k) == ca[k] for k in made),
              "reversed": sum(cb.get(k) == -ca[k] for k in made),
              "lost": sum(cb.get(k, 0) == 0 for k in made),
              "new": sum(s != 0 and ca.get(k, 0) == 0 for k, s in cb.items()),
              "claims_b": sum(s != 0 for s in cb.values())}
    arithmetic = [sorted({str(r.get("arithmetic") or "unrecorded") for r in rows})
                  for rows in (a, b)]
    return {**counts, **_cell_movement(a, b), "arithmetic_a": arithmetic[0],
            "arithmetic_b": arithmetic[1]}


def _cell_movement(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and largest |mean_B - mean_A| / sqrt(s_A²/n_A + s_B²/n_B) over the measured
    (method, level) cells of both."""
    def cells(rows):
        return {(s["method"], s["level"]): s for s in summarize(rows)
                if not s["interpolated"] and s["n"] > 1}
    sa, sb = cells(a), cells(b)
    moves = []
    for key in sorted(set(sa) & set(sb)):
        x, y = sa[key], sb[key]
        se = math.sqrt(x["test_accuracy_std"] ** 2 / x["n"] + y["test_accuracy_std"] ** 2 / y["n"])
        delta = abs(y["test_accuracy_mean"] - x["test_accuracy_mean"])
        moves.append((delta / se if se > 0 else (0.0 if delta == 0 else math.inf), key))
    worst = max(moves, default=(0.0, None))
    return {"cells": len(moves),
            "mean_se": sum(m for m, _ in moves) / len(moves) if moves else 0.0,
            "max_se": worst[0], "max_cell": worst[1]}


def summary_lines(result: dict[str, Any]) -> list[str]:
    r = result
    share = r["held"] / r["claims_a"] if r["claims_a"] else 1.0
    method, level = r["max_cell"] or ("-", 0.0)
    how = ("Holm over each level's pairs, family-wise 5%" if r["corrected"] else
           "95% each, uncorrected")
    return [f"pairs compared: {r['pairs']} (per level, paired by seed, Student-t, {how})",
            f"claims in A: {r['claims_a']}; held in B: {r['held']} ({100 * share:.1f}%), "
            f"reversed: {r['reversed']}, lost to noise: {r['lost']}; new in B: {r['new']} "
            f"(claims in B: {r['claims_b']})",
            f"cell means moved by {r['mean_se']:.2f} standard errors on average over "
            f"{r['cells']} cells, at most {r['max_se']:.2f} ({method} at {level:g}x)",
            f"arithmetic (digest of the runs' environment): A {', '.join(r['arithmetic_a'])}; "
            f"B {', '.join(r['arithmetic_b'])}: " + (
                "not known to be the same" if "unrecorded" in r["arithmetic_a"] +
                r["arithmetic_b"] else "the same" if r["arithmetic_a"] == r["arithmetic_b"]
                else "different")]
