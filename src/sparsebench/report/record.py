"""The report's record: one row of ``reports/curves.csv`` per (method, level, seed).

Each figure keeps the name the run gave it in ``result.json`` (`sparsebench.run.Figures`), so
the run, the report, the CSV and MLflow say the same word for the same number. A new figure
needs a field here (and in `INTERPOLATED` if a bracketed level interpolates it): its column,
its type when the CSV is read back and its place in the row follow from the field.
"""

from __future__ import annotations

import math
from typing import Any, get_args

from pydantic import BaseModel

#: the figures a bracketed level's row takes linear in log2(compression) between its two runs
INTERPOLATED = ("test_accuracy", "val_accuracy", "checkpoint_bytes")


class CurveRow(BaseModel):
    """A run's row: the required columns first (`stats.CSV_COLUMNS`), then those carried
    along when the runs have them."""

    method: str
    level: float
    level_sparsity: float
    seed: int
    test_accuracy: float
    sparsity: float
    compression: float
    flop_speedup: float
    epochs: int
    train_seconds: float
    interpolated: bool
    checkpoint_bytes: int | float | None = None
    family: str | None = None
    progressive: bool | None = None
    val_accuracy: float | None = None
    arithmetic: str | None = None  # `sparsebench.core.numerics.arithmetic_digest` of the run

    @classmethod
    def of_run(cls, key: str, run: dict[str, Any], level: float | None) -> CurveRow:
        """The row of a run record (`sparsebench.run.read_result`) at ``level``."""
        f = run["figures"]
        return cls(method=key, level=level or 1.0,
                   level_sparsity=0.0 if level is None else 1.0 - 1.0 / level,
                   seed=run["seed"], test_accuracy=f["test_accuracy"], sparsity=f["sparsity"],
                   compression=f["compression"], flop_speedup=f["flop_speedup"],
                   epochs=run["epochs"]["total"], train_seconds=run["seconds"]["train"],
                   interpolated=False, checkpoint_bytes=f["checkpoint_bytes"],
                   family=run["method"], progressive=bool(run["params"].get("progressive")),
                   val_accuracy=f.get("val_accuracy"),
                   arithmetic=run.get("environment", {}).get("arithmetic"))

    def interpolate(self, upper: CurveRow, level: float, max_compression: float) -> CurveRow:
        """The row at ``level`` between this (lower) run and ``upper``: the `INTERPOLATED`
        figures linear in log2(compression); FLOP speedup in proportion to compression from
        the lower point (the upper one may be an all-zero model, whose speedup is infinite)."""
        x0, x1 = (math.log2(min(r.compression, max_compression)) for r in (self, upper))
        t = (math.log2(level) - x0) / (x1 - x0) if x1 != x0 else 0.5
        update: dict[str, Any] = {
            name: getattr(self, name) + t * (getattr(upper, name) - getattr(self, name))
            for name in INTERPOLATED
            if getattr(self, name) is not None and getattr(upper, name) is not None}
        update.update(flop_speedup=self.flop_speedup * level / self.compression,
                      compression=level, sparsity=1.0 - 1.0 / level, interpolated=True,
                      train_seconds=(self.train_seconds + upper.train_seconds) / 2)
        return self.model_copy(update=update)

    def record(self) -> dict[str, Any]:
        """The row as the report's functions take it: a dict, without the figures the run
        lacks."""
        return self.model_dump(exclude_none=True)


def required_columns() -> list[str]:
    return [name for name, field in CurveRow.model_fields.items() if field.is_required()]


def column_types() -> dict[str, type]:
    """The typed columns and their type, to read ``curves.csv`` back (float where a column
    may hold either number); text columns are left out."""
    kinds: dict[str, type] = {}
    for name, field in CurveRow.model_fields.items():
        types = set(get_args(field.annotation) or (field.annotation,)) - {type(None)}
        if str not in types:
            kinds[name] = bool if bool in types else int if types == {int} else float
    return kinds
