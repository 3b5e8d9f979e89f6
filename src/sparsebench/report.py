"""The comparison report: one row per method (mean and spread over seeds), plots, MLflow.

Blalock et al. (2020) ask every table for: the epoch budget of each method, several seeds with
mean and spread, compression ratio and theoretical speedup together, and the dense, magnitude
and random baselines beside the method.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

REPORT_DIR = Path("reports")
PLOTS = REPORT_DIR / "plots"

COLUMNS = [  # (key in the metrics file, header, format)
    ("test_accuracy", "test acc (%)", "pct"),
    ("sparsity", "sparsity (%)", "pct"),
    ("density", "density (%)", "pct"),
    ("compression_ratio", "compression (weights)", "x"),
    ("compression_ratio_all", "compression (all params)", "x"),
    ("theoretical_speedup", "FLOP speedup", "x"),
    ("conv_kernel_density", "nonzero conv kernels (%)", "pct"),
    ("checkpoint_bytes", "checkpoint (KiB)", "kib"),
    ("checkpoint_ratio", "checkpoint vs dense file", "x"),
    ("latency_b1_ratio", "latency sparse/dense, batch 1", "r"),
    ("latency_b256_ratio", "latency sparse/dense, batch 256", "r"),
]


def _cell(mean: float, std: float, fmt: str) -> str:
    if fmt == "pct":
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    if fmt == "kib":
        return f"{mean / 1024:.1f} ± {std / 1024:.1f}"
    if fmt == "r":
        return f"{mean:.2f} ± {std:.2f}"
    return f"{mean:.1f}x ± {std:.1f}"


def _columns(results: dict[str, dict]) -> list[tuple[str, str, str]]:
    """The columns every result has (latency is optional)."""
    return [c for c in COLUMNS if all(c[0] in r["mean"] for r in results.values())]


def summary_rows(results: dict[str, dict]) -> list[dict]:
    """Flat rows for the CSV: method key, method, seeds, epochs, means and stds."""
    rows = []
    for key, r in results.items():
        row = {"key": key, "method": r["method"], "seeds": len(r["seeds"]),
               "params": _source(r), **{f"epochs_{k}": v for k, v in r["epochs"].items()}}
        for metric in [*(c[0] for c in _columns(results)), "test_loss", "flops_nonzero"]:
            row[metric] = r["mean"][metric]
            row[f"{metric}_std"] = r["std"][metric]
        rows.append(row)
    return rows


def markdown_table(results: dict[str, dict], suite: str) -> str:
    seeds = sorted({len(r["seeds"]) for r in results.values()})
    columns = _columns(results)
    head = ["method", "params", "epochs (pretrain+prune+retrain)"] + [h for _, h, _ in columns]
    lines = [
        f"# sparsebench: suite `{suite}`",
        "",
        f"Mean ± standard deviation over {', '.join(map(str, seeds))} seeds; test set. "
        "Compression = numel / nonzeros; FLOP speedup = dense / nonzero multiply-adds; "
        "checkpoint = the compressed sparse file (sparsebench.checkpoint) against the dense one; "
        "latency = CPU forward time of the CSR-sparse model over the dense one (< 1: sparse "
        "is faster).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for key, r in results.items():
        e = r["epochs"]
        budget = f"{e['total']} ({e['pretrain']}+{e['prune']}+{e['retrain']})"
        name = key if key == r["method"] else f"{key} ({r['method']})"
        cells = [_cell(r["mean"][m], r["std"][m], f) for m, _, f in columns]
        lines.append("| " + " | ".join([name, _source(r), budget, *cells]) + " |")
    return "\n".join(lines) + "\n" + tuning_section(results)


def _source(result: dict) -> str:
    """``tuned`` when the method ran with tuned/<key>.yaml, else ``default`` (hand-set)."""
    return result.get("params", {}).get("source", "default")


def _values(values: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in values.items())


def tuning_section(results: dict[str, dict]) -> str:
    """Tuned against hand-set, for every method that ran with tuned parameters: the study's
    validation figures of both (one seed, the tuning protocol) and this table's test accuracy."""
    tuned = {k: r for k, r in results.items() if _source(r) == "tuned"}
    if not tuned:
        return ""
    lines = [
        "",
        "## Tuned parameters",
        "",
        "Methods marked `tuned` ran with `tuned/<key>.yaml` (written by `sparsebench tune`). "
        "Validation accuracy (and sparsity) of the chosen trial and of the hand-set values "
        "(trial 0 of the same study): one seed, prune + masked retrain, validation split; "
        "the test accuracy is this table's.",
        "",
        "| method | study (finished trials) | tuned values | val acc tuned (%) | "
        "val acc hand-set (%) | test acc tuned (%) |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in tuned.items():
        p = r["params"]
        hand = "n/a"
        if "handset_val_accuracy" in p:
            hand = (f"{100 * p['handset_val_accuracy']:.2f} at "
                    f"{100 * p['handset_val_sparsity']:.1f}% sparse")
        lines.append(
            f"| {key} | {p['study']} ({p['trials']}) | {_values(p['values'])} | "
            f"{100 * p['val_accuracy']:.2f} at {100 * p['val_sparsity']:.1f}% sparse | {hand} | "
            f"{100 * r['mean']['test_accuracy']:.2f} ± {100 * r['std']['test_accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot_accuracy_vs_sparsity(results: dict[str, dict]) -> bytes:
    """Each method's points (one per seed) and the dense line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = "osD^vP*Xph"  # methods at the same point (the same masks) stay visible
    for i, (key, r) in enumerate(results.items()):
        xs = [100 * s["sparsity"] for s in r["seeds"].values()]
        ys = [100 * s["test_accuracy"] for s in r["seeds"].values()]
        if r["method"] == "dense":
            ax.axhline(r["mean"]["test_accuracy"] * 100, ls="--", c="k", lw=1, label=key)
        else:
            ax.scatter(xs, ys, label=key, s=28, marker=markers[i % len(markers)],
                       facecolors="none", edgecolors=f"C{i % 10}")
    ax.ticklabel_format(useOffset=False)  # sparsities 98.59 and 98.60: no "+9.86e1" axis
    ax.set_xlabel("sparsity of prunable weights (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_curves(curves: dict[str, list[dict]], metric: str) -> bytes:
    """``metric`` per epoch of each method's stages, seed 0, stages one after the other."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, rows in curves.items():
        if rows:
            ax.plot(range(1, len(rows) + 1), [row[metric] for row in rows], label=key)
    ax.set_xlabel("epoch (prune, then retrain)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_layer_sparsity(results: dict[str, dict]) -> bytes:
    """Per-layer sparsity of each method (first seed)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = list(results)
    layers = list(next(iter(results[keys[0]]["layers"].values())))
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        per_layer = next(iter(results[key]["layers"].values()))
        ax.bar([j + i * width for j in range(len(layers))],
               [100 * per_layer[name]["sparsity"] for name in layers], width, label=key)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], layers, fontsize=8)
    ax.set_ylabel("sparsity (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


RESIDUALS = ("primal_residual", "dual_residual", "rho", "z_sparsity")


def residual_table(prune_curves: dict[str, list[dict]]) -> list[dict]:
    """Per ADMM iteration of each ADMM-type method: residuals, rho, Z's sparsity, val accuracy."""
    return [{"method": key, "iteration": row["epoch"], "val_accuracy": row["val_accuracy"],
             **{k: row[k] for k in RESIDUALS if k in row}}
            for key, rows in prune_curves.items() for row in rows if "primal_residual" in row]


def plot_residuals(table: list[dict]) -> bytes:
    """Primal residual ||W - Z|| / ||W|| per ADMM iteration (log scale)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in dict.fromkeys(row["method"] for row in table):
        rows = [r for r in table if r["method"] == key]
        ax.plot([r["iteration"] for r in rows], [r["primal_residual"] for r in rows], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("ADMM iteration")
    ax.set_ylabel("primal residual ||W - Z|| / ||W||")
    if table:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def curve_table(curves: dict[str, list[dict]]) -> list[dict]:
    """Long-form rows (method, step, metrics) for `dvc plots`."""
    return [{"method": key, "step": i, **{k: row[k] for k in ("val_accuracy", "sparsity",
                                                                 "train_loss")}}
            for key, rows in curves.items() for i, row in enumerate(rows, 1)]


def write_report(results: dict[str, dict], curves: dict[str, list[dict]], suite: str,
                 prune_curves: dict[str, list[dict]] | None = None) -> list[Path]:
    """Write the table (markdown, CSV) and the plots; return the files written."""
    residuals = residual_table(prune_curves or {})
    from sparsebench.paths import atomic_write_many

    files = {
        REPORT_DIR / "summary.md": markdown_table(results, suite),
        REPORT_DIR / "summary.csv": to_csv(summary_rows(results)),
        PLOTS / "accuracy_vs_sparsity.csv": to_csv(
            [{"method": k, "seed": s, "sparsity": v["sparsity"],
              "test_accuracy": v["test_accuracy"]}
             for k, r in results.items() for s, v in r["seeds"].items()]),
        PLOTS / "curves.json": json.dumps(curve_table(curves), indent=1),
        PLOTS / "admm_residuals.json": json.dumps(residuals, indent=1),
    }
    files.update({
        PLOTS / "accuracy_vs_sparsity.png": plot_accuracy_vs_sparsity(results),
        PLOTS / "val_accuracy.png": plot_curves(curves, "val_accuracy"),
        PLOTS / "sparsity.png": plot_curves(curves, "sparsity"),
        PLOTS / "layer_sparsity.png": plot_layer_sparsity(results),
        PLOTS / "admm_residuals.png": plot_residuals(residuals),
    })
    atomic_write_many(files)  # all of the report or none of it
    return list(files)


def _png(fig) -> bytes:
    """The figure as PNG bytes (written with the rest of the report, atomically)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
