"""Where a `dvc repro` spent its time, from the stages' own records.

Every stage process writes ``.cache/profile/<stage>.json`` when it ends: its start-up (from the
process's start, as the kernel records it, to the start of the stage's own work: the
interpreter, the imports, reading and checking params.yaml), its wall seconds, and what it put
in `record` (a training stage: its runs' epoch seconds, evaluation and tracking seconds,
workers). ``sparsebench profile`` reads them all and prints per stage and in total: training,
start-up, the rest of the stage, and DVC's own time (the gaps between the stages of one `dvc
repro`); with the training share, epoch seconds summed over workers x wall time.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROFILE_DIR = Path(".cache", "profile")
_RECORD: dict[str, float] = {}


def process_start() -> float:
    """The Unix time this process started (Linux: /proc; elsewhere: now)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


def record(**figures: float) -> None:
    """Add figures (seconds, counts) to this stage's profile."""
    for key, value in figures.items():
        _RECORD[key] = _RECORD.get(key, 0.0) + value


@contextmanager
def timed(key: str):
    """Add the seconds the block takes to ``key``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        record(**{key: time.perf_counter() - start})


def write(stage: str, entered: float) -> None:
    """This stage's profile, at its end (``entered``: Unix time its own work began)."""
    start, now = process_start(), time.time()
    entry = {"stage": stage, "start": start, "end": now, "startup": max(0.0, entered - start),
             "wall": now - start, **_RECORD}
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    (PROFILE_DIR / f"{stage.replace('/', '_')}.json").write_text(json.dumps(entry, indent=1))


def load() -> list[dict[str, Any]]:
    entries = [json.loads(p.read_text()) for p in sorted(PROFILE_DIR.glob("*.json"))]
    return sorted(entries, key=lambda e: e["start"])


def table(entries: list[dict[str, Any]]) -> str:
    """The profile as text: a row per stage, then the totals of the last repro."""
    if not entries:
        return "no stage has run here yet (profiles are written to .cache/profile/)"
    lines = [f"{'stage':22s} {'wall s':>8s} {'start-up':>8s} {'training':>9s} {'eval':>7s} "
             f"{'tracking':>8s} {'workers':>7s} {'runs':>5s}"]
    for e in entries:
        lines.append(f"{e['stage']:22s} {e['wall']:8.1f} {e['startup']:8.1f} "
                     f"{e.get('train', 0):9.1f} {e.get('evaluate', 0):7.1f} "
                     f"{e.get('tracking', 0):8.1f} {e.get('workers', 1):7.0f} "
                     f"{e.get('trained', 0):5.0f}")
    span = entries[-1]["end"] - entries[0]["start"]
    walls = sum(e["wall"] for e in entries)
    train = sum(e.get("train", 0) for e in entries)
    capacity = sum(e["wall"] * e.get("workers", 1) for e in entries) + (span - walls)
    lines += ["", f"span of the stages: {span:.1f} s; in stages {walls:.1f} s, DVC between "
              f"them {span - walls:.1f} s; start-up {sum(e['startup'] for e in entries):.1f} s",
              f"training share: {train:.1f} epoch-seconds over {capacity:.1f} worker-seconds "
              f"= {train / capacity:.2f}" if capacity else ""]
    return "\n".join(lines)
