"""One row per (method, level, seed) from the methods' ``evaluation/<key>.json`` files: the
record `report.stats` and `report.tables` read. A bracketed level's row is interpolated in
log2(compression) between the seed's two runs around it (`sparsebench.pipeline.calibrate`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparsebench.core.levels import MAX_COMPRESSION
from sparsebench.report.record import CurveRow
from sparsebench.run import read_result
from sparsebench.util.errors import UsageError


def load_results(methods: dict[str, Any]) -> dict[str, dict]:
    """Summary and details of every configured method's runs, by method key."""
    results = {}
    for key in methods:
        path = Path("evaluation", f"{key}.json")
        if not path.exists():
            raise UsageError(f"input: {str(path)!r} does not exist; run the run stage first "
                             "(sparsebench run)")
        results[key] = json.loads(path.read_text())
    return results


def curve_rows(results: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (method, level, seed) from the methods' evaluation files: measured runs as
    they are, bracketed levels interpolated between their two runs."""
    rows = []
    for key, result in results.items():
        brackets: dict[tuple, dict[str, dict]] = {}
        for run in map(read_result, result["runs"]):
            if run["point"]:
                brackets.setdefault((run["level"], run["seed"]), {})[run["point"]] = run
            else:
                rows.append(CurveRow.of_run(key, run, run["level"]).record())
        for (level, _), pair in sorted(brackets.items()):
            low, high = (CurveRow.of_run(key, pair[p], level) for p in ("low", "high"))
            rows.append(low.interpolate(high, level, MAX_COMPRESSION).record())
    return rows
