"""The statistics of accuracy-vs-compression curves, checked against hand computations."""

from __future__ import annotations

import math
import statistics

import pytest

from sparsebench.report.stats import (
    CSV_COLUMNS,
    area_under_curve,
    levels_of,
    max_compression_within,
    paired_difference,
    rank_level,
    relation,
    summarize,
    t_quantile,
    validate_rows,
)

# Two-sided 95 % Student-t quantiles in closed form: for df = 2, F(t) = 1/2 + t / (2 sqrt(2 + t²))
# = 0.975 gives t² = 2 · 0.95² / (1 − 0.95²); for df = 1 (Cauchy), t = tan(0.475 π).
T_DF2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # 4.3026527297494...
T_DF1 = math.tan(0.475 * math.pi)  # 12.7062047361747...


def run(method: str, level: float, seed: int, acc: float, **extra) -> dict:
    """A valid row of one run; ``extra`` overrides or adds keys."""
    return {"method": method, "level": float(level),
            "level_sparsity": 1 - 1 / level, "seed": seed, "test_accuracy": acc,
            "sparsity": 1 - 1 / level, "compression": float(level),
            "flop_speedup": 0.8 * level if level > 1 else 1.0, "epochs": 60,
            "train_seconds": 100.0 + seed, "interpolated": False, **extra}


def runs(method: str, level: float, accs: list[float], **extra) -> list[dict]:
    return [run(method, level, seed, acc, **extra) for seed, acc in enumerate(accs)]


# --------------------------------------------------------------------------- paired differences


def test_paired_difference_is_the_hand_computed_t_interval():
    rows = runs("admm", 8, [0.91, 0.921, 0.929]) + runs("magnitude", 8, [0.89, 0.90, 0.91])
    diff = paired_difference(rows, "admm", "magnitude", 8)
    # differences 0.020, 0.021, 0.019: mean 0.02, sample std 0.001, half width t · 0.001 / √3
    half = T_DF2 * 0.001 / math.sqrt(3)
    assert diff["n"] == 3 and diff["seeds"] == [0, 1, 2]
    assert diff["mean"] == pytest.approx(0.02, abs=1e-12)
    assert diff["std"] == pytest.approx(0.001, abs=1e-12)
    assert diff["low"] == pytest.approx(0.02 - half, abs=1e-12)
    assert diff["high"] == pytest.approx(0.02 + half, abs=1e-12)
    assert diff["within_noise"] is False and relation(diff) == ">"
    reverse = paired_difference(rows, "magnitude", "admm", 8)
    assert reverse["mean"] == pytest.approx(-0.02) and relation(reverse) == "<"


def test_an_interval_holding_zero_is_within_noise():
    rows = runs("gmp", 16, [0.91, 0.89, 0.905]) + runs("magnitude", 16, [0.90, 0.90, 0.90])
    diff = paired_difference(rows, "gmp", "magnitude", 16)
    assert diff["low"] < 0 < diff["high"]
    assert diff["within_noise"] is True and relation(diff) == "≈"


def test_pairs_only_the_common_seeds_and_needs_two():
    rows = runs("admm", 8, [0.90, 0.93, 0.99]) + runs("magnitude", 8, [0.89, 0.91])
    diff = paired_difference(rows, "admm", "magnitude", 8)
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(0.015)
    half = T_DF1 * statistics.stdev([0.01, 0.02]) / math.sqrt(2)
    assert diff["high"] - diff["mean"] == pytest.approx(half)
    one_common = [*runs("admm", 8, [0.9, 0.9]), run("magnitude", 8, 1, 0.8)]
    assert paired_difference(one_common, "admm", "magnitude", 8) is None
    assert paired_difference(rows, "admm", "gmp", 8) is None  # gmp did not run
    assert relation(None) == "?"


def test_paired_difference_to_dense_at_its_own_level():
    rows = runs("admm", 32, [0.97, 0.96, 0.98]) + runs("dense", 1, [0.99, 0.98, 0.99])
    diff = paired_difference(rows, "admm", "dense", 32, baseline_level=1.0)
    assert diff["mean"] == pytest.approx(-0.0166666666, abs=1e-9)


def test_paired_difference_keeps_the_interpolated_flag():
    rows = (runs("grda", 64, [0.9, 0.91], interpolated=True)
            + runs("magnitude", 64, [0.9, 0.92]))
    assert paired_difference(rows, "grda", "magnitude", 64)["interpolated"] is True
    assert paired_difference(runs("gmp", 64, [0.9, 0.91]) + rows, "gmp", "magnitude",
                             64)["interpolated"] is False


def test_t_quantile():
    assert t_quantile(0.95, 2) == pytest.approx(T_DF2, abs=1e-12)
    assert t_quantile(0.95, 2) == pytest.approx(4.302652729911275, abs=1e-9)  # printed tables
    assert t_quantile(0.95, 1) == pytest.approx(T_DF1, abs=1e-12)
    assert t_quantile(0.99, 2) > t_quantile(0.95, 2)
    for confidence, df in [(0.0, 2), (1.0, 2), (1.5, 2), (0.95, 0)]:
        with pytest.raises(ValueError):
            t_quantile(confidence, df)


def test_a_wider_confidence_gives_a_wider_interval():
    rows = runs("admm", 8, [0.90, 0.92, 0.94]) + runs("magnitude", 8, [0.89, 0.90, 0.91])
    narrow = paired_difference(rows, "admm", "magnitude", 8, confidence=0.8)
    wide = paired_difference(rows, "admm", "magnitude", 8, confidence=0.99)
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]


# --------------------------------------------------------------------------- summaries and ranking


def test_summarize_gives_means_and_sample_stds_per_method_and_level():
    rows = (runs("gmp", 16, [0.90, 0.92, 0.97]) + runs("gmp", 8, [0.95, 0.96])
            + [run("admm", 8, 0, 0.97, interpolated=True)]
            + runs("admm", 16, [0.93, 0.94], interpolated=False))
    rows[-1]["interpolated"] = True
    summary = summarize(rows)
    assert [(s["method"], s["level"]) for s in summary] == [
        ("gmp", 8.0), ("gmp", 16.0), ("admm", 8.0), ("admm", 16.0)]
    gmp16 = summary[1]
    assert gmp16["n"] == 3 and gmp16["seeds"] == [0, 1, 2]
    assert gmp16["test_accuracy_mean"] == pytest.approx(0.93)
    assert gmp16["test_accuracy_std"] == pytest.approx(statistics.stdev([0.90, 0.92, 0.97]))
    assert gmp16["test_accuracy_std"] == pytest.approx(math.sqrt(0.0026 / 2))  # n - 1
    assert (gmp16["test_accuracy_min"], gmp16["test_accuracy_max"]) == (0.90, 0.97)
    assert gmp16["train_seconds_mean"] == pytest.approx(101.0)
    assert gmp16["epochs_mean"] == 60 and gmp16["epochs_std"] == 0
    assert gmp16["compression_mean"] == 16 and gmp16["level_sparsity"] == 1 - 1 / 16
    assert gmp16["interpolated"] is False and gmp16["n_interpolated"] == 0
    assert summary[2]["test_accuracy_std"] == 0.0  # one seed
    assert summary[2]["interpolated"] is True
    assert summary[3]["interpolated"] is True and summary[3]["n_interpolated"] == 1
    for metric in ("sparsity", "compression", "flop_speedup", "train_seconds", "epochs"):
        assert f"{metric}_mean" in gmp16 and f"{metric}_std" in gmp16


def test_rank_level_orders_by_mean_and_says_which_gaps_are_noise():
    rows = (runs("admm", 32, [0.980, 0.981, 0.982]) + runs("gmp", 32, [0.970, 0.971, 0.972])
            + runs("sas_admm", 32, [0.972, 0.968, 0.971])
            + runs("random", 32, [0.5, 0.6, 0.55]) + runs("admm", 8, [0.1, 0.1, 0.1]))
    ranking = rank_level(rows, 32)
    assert [r["method"] for r in ranking] == ["admm", "gmp", "sas_admm", "random"]
    assert [r["relation"] for r in ranking] == [">", "≈", ">", ""]
    assert [r["within_noise_next"] for r in ranking] == [False, True, False, None]
    assert ranking[0]["mean"] == pytest.approx(0.981)
    assert ranking[0]["std"] == pytest.approx(0.001)
    assert ranking[1]["next_difference"]["baseline"] == "sas_admm"
    assert ranking[-1]["next_difference"] is None


def test_rank_level_with_one_seed_cannot_judge_the_gap():
    rows = [run("admm", 8, 0, 0.9), run("gmp", 8, 0, 0.8)]
    ranking = rank_level(rows, 8)
    assert [r["relation"] for r in ranking] == ["?", ""]
    assert ranking[0]["within_noise_next"] is None


def test_levels_of_leaves_dense_out():
    rows = runs("dense", 1, [0.99]) + runs("gmp", 16, [0.9]) + runs("gmp", 8, [0.9])
    assert levels_of(rows) == [8.0, 16.0]


# ------------------------------------------------------------------- AUC and max compression


LEVELS = [8.0, 16.0, 32.0, 64.0, 128.0]


def test_auc_of_a_constant_curve_is_the_constant():
    summary = summarize([run("gmp", c, s, 0.97) for c in LEVELS for s in range(2)])
    assert area_under_curve(summary, "gmp", LEVELS) == pytest.approx(0.97)


def test_auc_is_the_trapezoid_over_log2_divided_by_the_span():
    # 8x: 0.99, 16x: 0.97, 64x: 0.91 -> x = 3, 4, 6: (1 * 0.98 + 2 * 0.94) / 3
    summary = summarize([run("gmp", 8, 0, 0.99), run("gmp", 16, 0, 0.97),
                         run("gmp", 64, 0, 0.91)])
    assert area_under_curve(summary, "gmp", [64, 8, 16]) == pytest.approx((0.98 + 1.88) / 3)
    assert area_under_curve(summary, "gmp", [16]) == pytest.approx(0.97)
    assert area_under_curve(summary, "gmp", [8, 32]) is None  # 32x missing
    assert area_under_curve(summary, "admm", [8]) is None
    with pytest.raises(ValueError, match="no levels"):
        area_under_curve(summary, "gmp", [])


def test_max_compression_within_points_of_dense():
    accs = {8: 0.985, 16: 0.981, 32: 0.9795, 64: 0.975, 128: 0.95}
    summary = summarize([run("gmp", c, 0, a) for c, a in accs.items()])
    assert max_compression_within(summary, "gmp", 0.985, 0.5) == 16.0
    assert max_compression_within(summary, "gmp", 0.985, 1.0) == 64.0  # 0.975 exactly: in
    assert max_compression_within(summary, "gmp", 0.99, 0.1) is None
    assert max_compression_within(summary, "admm", 0.985, 1.0) is None


def test_max_compression_within_counts_a_recovery_at_a_higher_level():
    summary = summarize([run("gmp", 8, 0, 0.98), run("gmp", 16, 0, 0.90),
                         run("gmp", 32, 0, 0.98)])
    assert max_compression_within(summary, "gmp", 0.98, 0.5) == 32.0


# --------------------------------------------------------------------------- validation


def test_csv_columns_are_the_documented_order():
    assert CSV_COLUMNS == ["method", "level", "level_sparsity", "seed", "test_accuracy",
                           "sparsity", "compression", "flop_speedup", "epochs",
                           "train_seconds", "interpolated"]


@pytest.mark.parametrize("key", CSV_COLUMNS)
def test_a_missing_key_is_refused_naming_row_and_key(key):
    row = run("admm", 8, 0, 0.9)
    del row[key]
    with pytest.raises(ValueError, match=f"key '{key}': missing") as error:
        validate_rows([row])
    label = {"method": "method=?", "level": "level=?", "seed": "seed=?"}
    assert label.get(key, "method='admm', level=8.0, seed=0") in str(error.value)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("test_accuracy", math.nan, "nan is not finite"),
    ("test_accuracy", 1.2, "1.2 is out of range; allowed: a finite number in [0, 1]"),
    ("test_accuracy", "0.9", "'0.9' is not a number"),
    ("level", 0.5, "0.5 is out of range"),
    ("level", math.inf, "inf is not finite"),
    ("level_sparsity", 0.5, "0.5 is not 1 - 1/level"),
    ("seed", -1, "-1 is not an integer >= 0"),
    ("seed", 1.0, "1.0 is not an integer >= 0"),
    ("seed", True, "True is not an integer >= 0"),
    ("sparsity", -0.1, "-0.1 is out of range"),
    ("compression", 0.5, "0.5 is out of range"),
    ("flop_speedup", 0.0, "0.0 is out of range; allowed: a finite number in (0, inf]"),
    ("epochs", 2.5, "2.5 is not an integer >= 0"),
    ("train_seconds", -1.0, "-1.0 is out of range"),
    ("interpolated", "yes", "'yes' is not true/false"),
    ("interpolated", 1, "1 is not true/false"),
    ("method", "", "'' is not a method name"),
    ("method", None, "None is not a method name"),
])
def test_a_bad_value_is_refused_naming_row_and_key(key, value, message):
    rows = [run("gmp", 8, 0, 0.9), {**run("admm", 8, 0, 0.9), key: value}]
    with pytest.raises(ValueError) as error:
        validate_rows(rows)
    text = str(error.value)
    assert f"key '{key}': {message}" in text and "\n" not in text
    if key not in ("method", "level", "seed"):
        assert "(method='admm', level=8.0, seed=0)" in text
    else:
        assert f"{key}={value!r}" in text


def test_every_entry_point_validates():
    rows = [run("admm", 8, 0, math.nan)]
    for call in (lambda: summarize(rows), lambda: rank_level(rows, 8),
                 lambda: paired_difference(rows, "admm", "gmp", 8)):
        with pytest.raises(ValueError, match=r"\(method='admm', level=8.0, seed=0\): key "
                                             r"'test_accuracy'"):
            call()


def test_a_run_given_twice_is_refused():
    rows = [run("admm", 8, 0, 0.9), run("admm", 8, 0, 0.91)]
    with pytest.raises(ValueError, match=r"the same .method, level, seed. comes twice"):
        validate_rows(rows)
