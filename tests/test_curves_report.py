"""The curves report: the CSV round-trips, the markdown says what the statistics say, the plot
is a PNG, and the files appear all together or not at all."""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import re
import statistics

import pytest

from sparsebench.report import tables as curves_report
from sparsebench.report.stats import (
    CSV_COLUMNS,
    area_under_curve,
    comparisons,
    groups,
    max_compression_within,
    paired_difference,
    probability_of_improvement,
    summarize,
)
from sparsebench.report.tables import (
    COMPARISON_COLUMNS,
    comparisons_csv,
    curves_csv,
    curves_markdown,
    difference_cell,
    outlier_methods,
    plot_accuracy_vs_compression,
    read_curves_csv,
    write_curves_report,
)

LEVELS = [8.0, 16.0, 32.0]
QUALITY = {"magnitude": 0.0, "gmp": 0.004, "admm": 0.006, "grda": 0.002, "random": -0.08}
NOISE = [0.0011, -0.0007, 0.0003]  # per seed, fixed


def run(method: str, level: float, seed: int, acc: float, **extra) -> dict:
    return {"method": method, "level": float(level), "level_sparsity": 1 - 1 / level,
            "seed": seed, "test_accuracy": acc, "sparsity": 1 - 1 / level,
            "compression": float(level) * (1 + 0.001 * seed),
            "flop_speedup": 0.8 * level if level > 1 else 1.0, "epochs": 60 if level > 1 else 30,
            "train_seconds": 100.0 + 7.25 * seed, "interpolated": False, **extra}


def suite_rows() -> list[dict]:
    """Dense and five methods at 8x, 16x, 32x, 3 seeds; accuracy falls with compression;
    grda's 32x points are interpolated."""
    rows = [run("dense", 1, s, 0.990 + NOISE[s]) for s in range(3)]
    for method, bonus in QUALITY.items():
        for level in LEVELS:
            for seed in range(3):
                drop = 0.005 * (math.log2(level) - 3) ** 2 + 0.002
                acc = 0.99 - drop + bonus * (math.log2(level) - 2) / 3 + NOISE[seed] * (
                    1 + 0.5 * (seed == 2 and method == "admm"))
                rows.append(run(method, level, seed, acc,
                                interpolated=method == "grda" and level == 32))
    return rows


ROWS = suite_rows()


def pct(value: float) -> float:
    return round(100 * value, 2)


def tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Each ``## `` section's table as dicts by header."""
    sections = {}
    for section in markdown.split("\n## ")[1:]:
        title, *lines = section.splitlines()
        cells = [[c.strip() for c in line.strip("|").split("|")]
                 for line in lines if line.startswith("|") and not line.startswith("|---")]
        if cells:
            sections[title] = [dict(zip(cells[0], row, strict=True)) for row in cells[1:]]
    return sections


def mean_std(cell: str) -> tuple[float, float]:
    """``98.10 ± 0.14`` / ``8.0x ± 0.0`` / ``97.1 ± 0.2*`` as two numbers."""
    mean, std = cell.rstrip("*").split(" ± ")
    return float(mean.rstrip("x")), float(std)


def signed(text: str) -> float:
    return float(text.replace("\u2212", "-"))


# --------------------------------------------------------------------------- CSV


def test_csv_round_trip_equals_the_rows():
    rows = [{**row, "tuned": "yes" if row["method"] == "admm" else "no"} for row in ROWS]
    text = curves_csv(rows)
    assert text.splitlines()[0] == ",".join([*CSV_COLUMNS, "tuned"])
    assert read_curves_csv(text) == rows
    raw = list(csv.DictReader(io.StringIO(text)))
    assert {r["interpolated"] for r in raw} == {"true", "false"}
    assert len(raw) == len(ROWS)


def test_csv_columns_can_be_chosen():
    rows = [{**row, "a": 1, "b": 2} for row in ROWS[:2]]
    text = curves_csv(rows, [*CSV_COLUMNS, "b"])
    assert text.splitlines()[0].endswith("interpolated,b")
    assert text.splitlines()[1].endswith("false,2")


def test_csv_refuses_a_bad_row_and_a_bad_boolean():
    with pytest.raises(ValueError, match="key 'test_accuracy'"):
        curves_csv([{**ROWS[0], "test_accuracy": math.nan}])
    text = curves_csv(ROWS[:1]).replace("false", "no")
    with pytest.raises(ValueError, match="interpolated 'no'; allowed: true, false"):
        read_curves_csv(text)


# --------------------------------------------------------------------------- markdown


def test_level_tables_hold_the_summaries():
    markdown = curves_markdown(ROWS, suite="default", budget=60)
    sections = tables(markdown)
    summary = summarize(ROWS)
    for s in summary:
        if s["method"] == "dense":
            continue
        title = f"{s['level']:g}x ({100 * s['level_sparsity']:.2f}% sparse)"
        line = next(r for r in sections[title] if r["method"].rstrip("*") == s["method"])
        assert mean_std(line["test acc (%)"]) == (pct(s["test_accuracy_mean"]),
                                                  pct(s["test_accuracy_std"]))
        assert mean_std(line["sparsity (%)"]) == (pct(s["sparsity_mean"]),
                                                  pct(s["sparsity_std"]))
        assert mean_std(line["compression"]) == (round(s["compression_mean"], 1),
                                                 round(s["compression_std"], 1))
        assert mean_std(line["FLOP speedup"])[0] == round(s["flop_speedup_mean"], 1)
        assert mean_std(line["train (s)"]) == (round(s["train_seconds_mean"], 1),
                                               round(s["train_seconds_std"], 1))
        assert mean_std(line["epochs"]) == (60.0, 0.0)
        assert line["seeds"].split()[0] == "3"


DIFFERENCE = re.compile(r"([+\u2212]\d+\.\d\d) \(p (<0\.001|\d\.\d{3}), PoI (\d+)%\)"
                        r"( \(noise\))?$")


def accuracies(rows: list[dict], method: str, level: float) -> list[float]:
    return [r["test_accuracy"] for r in rows
            if r["method"] == method and r["level"] == level and not r["interpolated"]]


def test_differences_to_magnitude_and_gmp_are_the_corrected_comparisons():
    sections = tables(curves_markdown(ROWS, suite="default", budget=60))
    checked = []
    for title, table in sections.items():
        if not title.endswith("sparse)"):
            continue
        level = float(title.split("x")[0])
        pairs = comparisons(ROWS, level)
        for line in table:
            method = line["method"].rstrip("*")
            for baseline in ("magnitude", "gmp"):
                cell = line[f"Δ vs {baseline} (pp)"]
                if method == baseline:
                    assert cell == "—"
                    continue
                if line["method"].endswith("*"):  # grda at 32x: every row interpolated
                    assert cell == "n/a"
                    checked.append("n/a")
                    continue
                pair = next(p for p in pairs if {p["a"], p["b"]} == {method, baseline})
                mean, p, poi, noise = DIFFERENCE.match(cell).groups()
                assert signed(mean) == pct(paired_difference(ROWS, method, baseline,
                                                             level)["mean"])
                assert p == ("<0.001" if pair["p_holm"] < 0.001 else f"{pair['p_holm']:.3f}")
                assert int(poi) == round(100 * probability_of_improvement(
                    accuracies(ROWS, method, level), accuracies(ROWS, baseline, level)))
                assert bool(noise) == (pair["relation"] == "≈")
                checked.append(cell)
    # 3 levels: 3 methods against both baselines, the 2 baselines against each other
    assert len(checked) == 3 * (3 * 2 + 2) and checked.count("n/a") == 2


def test_difference_cell_format():
    pair = {"a": "admm", "b": "magnitude", "mean": 0.0066, "p_holm": 0.0031, "poi": 1.0,
            "relation": ">"}
    assert difference_cell(pair, "admm") == "+0.66 (p 0.003, PoI 100%)"
    assert difference_cell(pair, "magnitude") == "\u22120.66 (p 0.003, PoI 0%)"
    noise = {**pair, "p_holm": 0.2, "poi": 0.75, "relation": "≈"}
    assert difference_cell(noise, "admm") == "+0.66 (p 0.200, PoI 75%) (noise)"
    assert difference_cell(noise, "magnitude") == "\u22120.66 (p 0.200, PoI 25%) (noise)"
    assert difference_cell({**pair, "p_holm": 0.00099}, "admm").startswith("+0.66 (p <0.001,")
    assert difference_cell({**pair, "p_holm": 0.001}, "admm").startswith("+0.66 (p 0.001,")
    assert difference_cell({**pair, "mean": -0.00001}, "admm").startswith("\u22120.00 ")
    assert difference_cell(None, "admm") == "n/a"


# 8x, 3 seeds: admm-gmp, admm-magnitude, gmp-magnitude differ by 0.006, 0.008, 0.001 /
# 0.011, 0.012, 0.006 / 0.005, 0.004, 0.005 (mean 0.005, 0.00967, 0.00467); grda is
# interpolated; admm's seed 1 is 2.5% off the level
ADMM, GMP, MAGNITUDE = [0.981, 0.984, 0.979], [0.975, 0.976, 0.978], [0.970, 0.972, 0.973]


def noisy_rows() -> list[dict]:
    rows = [run("dense", 1, s, 0.99) for s in range(3)]
    for method, accs in (("magnitude", MAGNITUDE), ("gmp", GMP), ("admm", ADMM),
                         ("grda", [0.99, 0.99, 0.99])):
        rows += [run(method, 8, s, acc, interpolated=method == "grda",
                     compression=8.2 if (method, s) == ("admm", 1) else
                     16.0 if method == "grda" else 8.0)
                 for s, acc in enumerate(accs)]
    return rows


def p_df2(diffs: list[float]) -> float:
    """The two-sided p of a paired t test of 3 differences: for df = 2, P(|T| > t) =
    1 − t / √(2 + t²)."""
    t = statistics.fmean(diffs) / (statistics.stdev(diffs) / math.sqrt(3))
    return 1 - t / math.sqrt(2 + t * t)


def test_a_level_with_noise_shows_holm_p_values_and_groups():
    markdown = curves_markdown(noisy_rows(), suite="s", budget=60)
    table = {r["method"]: r for r in tables(markdown)["8x (87.50% sparse)"]}
    p_admm_gmp = p_df2([0.006, 0.008, 0.001])  # 0.138
    p_admm_magnitude = p_df2([0.011, 0.012, 0.006])  # 0.0349
    p_gmp_magnitude = p_df2([0.005, 0.004, 0.005])  # 0.00506: the smallest, times 3
    assert p_gmp_magnitude < p_admm_magnitude < p_admm_gmp
    holm_admm_magnitude = 2 * p_admm_magnitude  # 0.0699 >= 0.05 although 0.0349 < 0.05
    holm_admm_gmp = max(holm_admm_magnitude, p_admm_gmp)
    assert (holm_admm_gmp, holm_admm_magnitude, 3 * p_gmp_magnitude) == pytest.approx(
        (0.1383, 0.0699, 0.0152), abs=1e-4)
    assert table["admm"]["Δ vs gmp (pp)"] == "+0.50 (p 0.138, PoI 100%) (noise)"
    assert table["admm"]["Δ vs magnitude (pp)"] == "+0.97 (p 0.070, PoI 100%) (noise)"
    assert table["gmp"]["Δ vs magnitude (pp)"] == "+0.47 (p 0.015, PoI 100%)"
    assert table["magnitude"]["Δ vs gmp (pp)"] == "\u22120.47 (p 0.015, PoI 0%)"
    assert table["gmp"]["Δ vs gmp (pp)"] == "—"
    assert table["grda*"]["Δ vs magnitude (pp)"] == table["grda*"]["Δ vs gmp (pp)"] == "n/a"
    groups_lines = [line for line in markdown.splitlines() if line.startswith("Groups (")]
    # gmp > magnitude alone is a claim; magnitude is not separated from the leader admm
    assert groups_lines == ["Groups (1 of 3 pairs separated): 1: admm 98.13, gmp 97.63, "
                            "magnitude 97.17 · not compared: grda* 99.00"]


def test_off_level_is_the_largest_distance_of_a_measured_seed():
    markdown = curves_markdown(noisy_rows(), suite="s", budget=60)
    table = {r["method"]: r for r in tables(markdown)["8x (87.50% sparse)"]}
    assert table["admm"]["off level (max %)"] == "2.5"  # |8.2 / 8 − 1|
    assert table["gmp"]["off level (max %)"] == "0.0"
    assert table["grda*"]["off level (max %)"] == "n/a"  # 16x, but interpolated: not measured
    rows = [*noisy_rows(), run("grda", 8, 3, 0.9, compression=7.6)]
    assert curves_report.off_level(rows, "grda", 8.0) == pytest.approx(0.05)  # |7.6 / 8 − 1|
    assert curves_report.off_level(rows, "admm", 8.0) == pytest.approx(0.025)
    assert curves_report.off_level(rows, "admm", 16.0) is None
    sections = tables(curves_markdown(ROWS, suite="default", budget=60))
    assert {r["off level (max %)"] for r in sections["16x (93.75% sparse)"]} == {"0.2"}


def test_one_seed_gives_n_a_differences_and_no_groups():
    rows = [r for r in ROWS if r["seed"] == 0]
    markdown = curves_markdown(rows, suite="default", budget=None)
    line = tables(markdown)["8x (87.50% sparse)"][2]
    assert line["Δ vs magnitude (pp)"] == "n/a" and line["Δ vs gmp (pp)"] == "n/a"
    groups_lines = [line for line in markdown.splitlines() if line.startswith("Groups (")]
    assert len(groups_lines) == 3
    assert all(line.startswith("Groups (0 of 0 pairs separated): not compared: magnitude ")
               for line in groups_lines)
    assert groups_lines[2].count(",") == 4 and "grda* " in groups_lines[2]
    assert "One seed: each run's value, no spread; test set." in markdown
    assert "Dense (no pruning): test accuracy 99.11 % (one seed)." in markdown
    acc = next(r["test_accuracy"] for r in rows
               if r["method"] == line["method"] and r["level"] == 8.0)
    assert line["test acc (%)"] == f"{100 * acc:.2f}"
    assert line["compression"] == "8.0x" and "±" not in "".join(line.values())


def test_groups_lines_follow_the_comparisons():
    markdown = curves_markdown(ROWS, suite="default", budget=60)
    assert "Ranking" not in markdown and "adjusted by Holm's method" in markdown
    lines = [line for line in markdown.splitlines() if line.startswith("Groups (")]
    assert len(lines) == len(LEVELS)
    summary = summarize(ROWS)
    for level, line in zip(LEVELS, lines, strict=True):
        pairs = comparisons(ROWS, level)
        compared = {m for p in pairs for m in (p["a"], p["b"])}
        means = {s["method"]: s["test_accuracy_mean"] for s in summary
                 if s["level"] == level and s["method"] in compared}
        found = groups(pairs, means)
        separated = sum(p["relation"] != "≈" for p in pairs)
        text = " · ".join(f"{i}: " + ", ".join(f"{m} {100 * means[m]:.2f}" for m in group)
                          for i, group in enumerate(found, 1))
        assert line.startswith(f"Groups ({separated} of {len(pairs)} pairs separated): {text}")
    # the noise of ROWS is shared by the seeds: every pair separated, one method a group
    assert lines[0] == ("Groups (10 of 10 pairs separated): 1: admm 99.03 · 2: gmp 98.96 · "
                        "3: grda 98.89 · 4: magnitude 98.82 · 5: random 96.16")
    assert lines[2].startswith("Groups (6 of 6 pairs separated): ")


def test_interpolated_points_are_marked_everywhere():
    markdown = curves_markdown(ROWS, suite="default", budget=60)
    sections = tables(markdown)
    at32 = {r["method"]: r for r in sections["32x (96.88% sparse)"]}
    assert at32["grda*"]["seeds"] == "3 (3 interp.)"
    assert at32["grda*"]["test acc (%)"].endswith("*")
    assert at32["grda*"]["Δ vs gmp (pp)"] == "n/a"  # no claim on interpolated points
    assert not at32["admm"]["test acc (%)"].endswith("*")
    assert "grda" in {r["method"] for r in sections["16x (93.75% sparse)"]}  # measured there
    groups_lines = [line for line in markdown.splitlines() if line.startswith("Groups (")]
    grda = next(s for s in summarize(ROWS) if (s["method"], s["level"]) == ("grda", 32.0))
    assert groups_lines[2].endswith(
        f" · not compared: grda* {100 * grda['test_accuracy_mean']:.2f}")
    assert "grda*" not in groups_lines[0] and "grda " in groups_lines[0]
    assert "Values marked * are built from interpolated points" in markdown
    assert re.search(r"\| grda\* \| \d+\.\d\d\* \|", markdown)  # its AUC uses them


def test_per_method_table_holds_auc_and_max_compression():
    markdown = curves_markdown(ROWS, suite="default", budget=60)
    table = {r["method"].rstrip("*"): r for r in tables(markdown)["Per method"]}
    summary = summarize(ROWS)
    dense = next(s for s in summary if s["method"] == "dense")["test_accuracy_mean"]
    assert set(table) == set(QUALITY)
    for method, line in table.items():
        auc = line["AUC: mean acc over log2 compression (%)"].rstrip("*")
        assert float(auc) == pct(area_under_curve(summary, method, LEVELS))
        for points in (0.5, 1.0):
            cell = line[f"max compression within {points} pp of dense"].rstrip("*")
            best = max_compression_within(summary, method, dense, points)
            assert cell == ("none" if best is None else f"{best:g}x")
    assert table["random"]["max compression within 1.0 pp of dense"] == "none"


def test_header_states_dense_budget_and_suite():
    markdown = curves_markdown(ROWS, suite="default", budget=60)
    dense = next(s for s in summarize(ROWS) if s["method"] == "dense")
    assert markdown.startswith("# sparsebench: accuracy against compression, suite `default`")
    assert (f"Dense (no pruning): test accuracy {pct(dense['test_accuracy_mean']):.2f} ± "
            f"{pct(dense['test_accuracy_std']):.2f} % (mean ± std over 3 seeds).") in markdown
    assert "Epoch budget: 60 epochs per run; runs used 30–60 epochs" in markdown
    assert "Over the budget" not in markdown
    assert "Values marked * are built from interpolated points" in markdown
    measured = [r for r in ROWS if not r["interpolated"]]
    assert "Values marked *" not in curves_markdown(measured, suite="s", budget=None)
    sparse = [r for r in ROWS if r["method"] != "dense"]
    assert "every run used 60 epochs." in curves_markdown(sparse, suite="s", budget=60)
    assert "**Over the budget:** admm, gmp" in curves_markdown(ROWS, suite="s", budget=50)
    assert "Epoch budget: none set; runs used 30–60" in curves_markdown(ROWS, suite="s",
                                                                       budget=None)


def test_without_dense_the_within_dense_columns_are_n_a():
    rows = [r for r in ROWS if r["method"] != "dense"]
    markdown = curves_markdown(rows, suite="default", budget=60)
    assert "Dense: not in these runs" in markdown
    line = tables(markdown)["Per method"][0]
    assert line["max compression within 0.5 pp of dense"] == "n/a"


def test_a_missing_level_gives_n_a_auc():
    rows = [r for r in ROWS if not (r["method"] == "gmp" and r["level"] == 16)]
    table = {r["method"]: r for r in tables(curves_markdown(rows, suite="s", budget=1))[
        "Per method"]}
    assert table["gmp"]["AUC: mean acc over log2 compression (%)"] == "n/a"


def test_no_rows_is_refused():
    with pytest.raises(ValueError, match="no rows"):
        curves_markdown([], suite="s", budget=None)


# --------------------------------------------------------------------------- plot and files


def test_random_is_the_outlier_of_the_zoom_panel():
    assert outlier_methods(summarize(ROWS)) == ["random"]
    assert outlier_methods(summarize([r for r in ROWS if r["method"] != "random"])) == []


def test_plot_is_a_png():
    png = plot_accuracy_vs_compression(summarize(ROWS))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_write_curves_report_writes_every_file(tmp_path):
    files = write_curves_report(ROWS, tmp_path / "reports", suite="default", budget=60)
    base = tmp_path / "reports"
    assert files == [base / "curves.csv", base / "curves.md", base / "comparisons.csv",
                     base / "plots" / "accuracy_vs_compression.csv",
                     base / "plots" / "accuracy_vs_compression.png"]
    assert all(p.is_file() for p in files)
    assert files[4].read_bytes().startswith(b"\x89PNG")
    assert read_curves_csv(files[0].read_text()) == ROWS
    assert files[1].read_text() == curves_markdown(ROWS, suite="default", budget=60)
    points = list(csv.DictReader(io.StringIO(files[3].read_text())))
    summary = summarize(ROWS)
    assert len(points) == len(summary)
    for point, s in zip(points, summary, strict=True):
        assert (point["method"], float(point["compression"])) == (s["method"], s["level"])
        assert float(point["test_accuracy"]) == s["test_accuracy_mean"]
        assert point["interpolated"] == ("true" if s["interpolated"] else "false")
    assert not list(base.rglob(".*.tmp"))


def test_comparisons_csv_has_every_pair_of_every_level(tmp_path):
    write_curves_report(ROWS, tmp_path, suite="default", budget=60)
    text = (tmp_path / "comparisons.csv").read_text()
    assert text.splitlines()[0] == ",".join(COMPARISON_COLUMNS)
    assert COMPARISON_COLUMNS == ("level", "a", "b", "n", "mean", "std", "p", "p_holm", "poi",
                                  "relation")
    written = list(csv.DictReader(io.StringIO(text)))
    # 5 methods at 8x and 16x: 10 pairs each; at 32x grda is interpolated: 4 methods, 6 pairs
    assert len(written) == 10 + 10 + 6
    assert [float(r["level"]) for r in written] == [8.0] * 10 + [16.0] * 10 + [32.0] * 6
    assert all("grda" not in (r["a"], r["b"]) for r in written[20:])
    expected = [p for level in LEVELS for p in comparisons(ROWS, level)]
    for row, pair in zip(written, expected, strict=True):
        assert (row["a"], row["b"], int(row["n"]), row["relation"]) == (
            pair["a"], pair["b"], pair["n"], pair["relation"])
        for key in ("mean", "std", "p", "p_holm", "poi"):
            assert float(row[key]) == pair[key]  # repr: the same float back
    noisy = list(csv.DictReader(io.StringIO(comparisons_csv(noisy_rows()))))
    assert [(r["a"], r["b"], r["relation"]) for r in noisy] == [
        ("admm", "gmp", "≈"), ("admm", "magnitude", "≈"), ("gmp", "magnitude", ">")]
    assert float(noisy[2]["p"]) == pytest.approx(p_df2([0.005, 0.004, 0.005]), rel=1e-9)
    assert float(noisy[2]["p_holm"]) == pytest.approx(3 * float(noisy[2]["p"]), rel=1e-12)


def test_a_bad_row_writes_nothing(tmp_path):
    rows = [*ROWS, run("admm", 0.5, 9, 0.9)]
    with pytest.raises(ValueError, match=r"\(method='admm', level=0.5, seed=9\): key 'level'"):
        write_curves_report(rows, tmp_path, suite="default", budget=60)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_plot_writes_nothing(tmp_path, monkeypatch):
    def broken(summaries):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(curves_report, "plot_accuracy_vs_compression", broken)
    with pytest.raises(RuntimeError):
        write_curves_report(ROWS, tmp_path, suite="default", budget=60)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_previous_report(tmp_path, monkeypatch):
    old = write_curves_report(ROWS, tmp_path, suite="default", budget=60)
    before = {p: p.read_bytes() for p in old}
    real = os.fdopen

    def full_disk_for_the_png(fd, *args):  # the other files are written by then
        if "accuracy_vs_compression.png" in os.readlink(f"/proc/self/fd/{fd}"):
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, *args)

    monkeypatch.setattr(os, "fdopen", full_disk_for_the_png)
    with pytest.raises(OSError, match="No space left"):
        write_curves_report(ROWS[:-1], tmp_path, suite="other", budget=60)
    assert {p: p.read_bytes() for p in old} == before
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_progressive_series_has_its_own_table_and_stays_off_the_curve(tmp_path):
    """Its points carry the series' budget: they are neither grouped nor compared nor in the
    per-level tables nor in the plot's table, and its own table's numbers are the rows'."""
    series = [run("admm_prog", level, seed, 0.985 - 0.001 * seed - 0.002 * i,
                  progressive=True, epochs=60 + 50 * i)
              for i, level in enumerate([8.0, 16.0, 64.0]) for seed in range(3)]
    markdown = curves_markdown(ROWS + series, suite="t", budget=60)
    sections = tables(markdown)
    table = sections["Progressive series"]
    assert [r["level"] for r in table] == ["8x", "16x", "64x"]
    assert all(r["method"] == "admm_prog" and r["seeds"] == "3" for r in table)
    mean, std = mean_std(table[2]["test accuracy (%)"])
    accs = [100 * r["test_accuracy"] for r in series if r["level"] == 64.0]
    assert mean == pytest.approx(statistics.fmean(accs), abs=0.005)
    assert std == pytest.approx(statistics.stdev(accs), abs=0.005)
    assert [r["epochs"] for r in table] == ["60", "110", "160"]
    for title, rows in sections.items():
        if title != "Progressive series":
            assert all(r.get("method") != "admm_prog" for r in rows), title
    assert "admm_prog" not in "\n".join(
        line for line in markdown.splitlines() if line.startswith("Groups ("))
    assert "64x" not in markdown.split("## Progressive series")[0]  # no curve level of its own
    files = write_curves_report(ROWS + series, tmp_path, suite="t", budget=60)
    plotted = (tmp_path / "plots" / "accuracy_vs_compression.csv").read_text()
    assert "admm_prog" not in plotted
    csv_rows = read_curves_csv((tmp_path / "curves.csv").read_text())
    assert sum(r["method"] == "admm_prog" for r in csv_rows) == 9
    assert len(files) == 5
    pairs = (tmp_path / "comparisons.csv").read_text()
    assert "admm_prog" not in pairs and pairs == comparisons_csv(ROWS)


def test_a_suite_of_series_only_has_dense_and_the_series_table(tmp_path):
    """Every pruned method a series (pipelines/lenet5-progressive): no empty curve sections,
    dense's line and the series table; without dense too."""
    series = [run("admm", level, seed, 0.99 - 0.001 * i, progressive=True, epochs=60 + 50 * i)
              for i, level in enumerate([100.0, 150.0]) for seed in range(3)]
    dense = [r for r in ROWS if r["method"] == "dense"]
    assert dense
    markdown = curves_markdown(dense + series, suite="t", budget=60)
    assert "## Per method" not in markdown and "## 100x" not in markdown
    assert "Dense (no pruning): test accuracy" in markdown
    assert "No method is on the equal-budget curve" in markdown
    assert [r["level"] for r in tables(markdown)["Progressive series"]] == ["100x", "150x"]
    alone = curves_markdown(series, suite="t", budget=60)
    assert "Dense: not in these runs" in alone and "## Progressive series" in alone
    files = write_curves_report(dense + series, tmp_path, suite="t", budget=60)
    assert len(files) == 5
    assert (tmp_path / "comparisons.csv").read_text() == ",".join(COMPARISON_COLUMNS) + "\n"
    plotted = (tmp_path / "plots" / "accuracy_vs_compression.csv").read_text().splitlines()
    assert len(plotted) == 2 and plotted[1].startswith("dense,")  # dense alone is plotted
    one = curves_markdown(dense + [r for r in series if r["seed"] == 0], suite="t", budget=60)
    assert [(r["seeds"], r["test accuracy (%)"], r["compression"])
            for r in tables(one)["Progressive series"]] == [("1", "99.00", "100.0x"),
                                                            ("1", "98.90", "150.0x")]
    write_curves_report(series, tmp_path / "alone", suite="t", budget=60)
    assert (tmp_path / "alone" / "plots" / "accuracy_vs_compression.csv").read_text(
        ).splitlines() == plotted[:1]  # no point: the same header
