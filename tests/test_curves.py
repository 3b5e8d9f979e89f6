"""The statistics of accuracy-vs-compression curves, checked against hand computations."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import ttest_rel

from sparsebench.report.stats import (
    ALPHA,
    CSV_COLUMNS,
    area_under_curve,
    comparisons,
    groups,
    holm,
    levels_of,
    max_compression_within,
    paired_difference,
    probability_of_improvement,
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


# --------------------------------------------------------------------------- summaries


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


def test_levels_of_leaves_dense_out():
    rows = runs("dense", 1, [0.99]) + runs("gmp", 16, [0.9]) + runs("gmp", 8, [0.9])
    assert levels_of(rows) == [8.0, 16.0]


# ------------------------------------------------------------- corrected comparisons and groups


def test_holm_multiplies_the_sorted_p_values_and_keeps_them_in_order():
    # sorted: 0.005 · 4 = 0.02, 0.01 · 3 = 0.03, 0.03 · 2 = 0.06, 0.04 · 1 = 0.04 -> 0.06 (the
    # running maximum): back in the input's order
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.7, 0.01]) == pytest.approx([1.0, 1.0, 0.03])  # 1.2 capped at 1
    assert holm([0.04]) == [0.04] and holm([]) == []
    assert holm([0.02, 0.02]) == pytest.approx([0.04, 0.04])  # a tie: 0.04, max(0.04, 0.02)
    ps = [0.2, 0.001, 0.03, 0.04, 0.5, 0.011]
    adjusted = holm(ps)
    order = sorted(range(len(ps)), key=ps.__getitem__)
    assert [adjusted[i] for i in order] == sorted(adjusted)  # the raw order, not decreasing
    assert all(p <= q <= min(1.0, len(ps) * p) for p, q in zip(ps, adjusted, strict=True))


def test_probability_of_improvement_counts_every_pair_of_seeds_ties_a_half():
    # (1, 2) ×2: 0, (2, 2) ×2: 0.5 each, (3, 2) ×2: 1 each -> 3 / 6
    assert probability_of_improvement([1, 2, 3], [2, 2]) == 0.5
    # (1, 2) 0, (1, 3) 0, (3, 2) 1, (3, 3) 0.5, (4, 2) 1, (4, 3) 1 -> 3.5 / 6
    assert probability_of_improvement([1, 3, 4], [2, 3]) == pytest.approx(7 / 12)
    assert probability_of_improvement([1, 3, 4], [2, 3]) + probability_of_improvement(
        [2, 3], [1, 3, 4]) == pytest.approx(1.0)
    assert probability_of_improvement([0.98, 0.99], [0.90, 0.97, 0.975]) == 1.0
    assert probability_of_improvement([0.90, 0.97], [0.98, 0.99]) == 0.0


# admm > gmp > magnitude on the mean; paired p: admm-gmp 0.138, admm-magnitude 0.0349,
# gmp-magnitude 0.00506 -> Holm (3 pairs): 0.0152, 2 · 0.0349 = 0.0699, max(0.0699, 0.138)
ADMM, GMP, MAGNITUDE = [0.981, 0.984, 0.979], [0.975, 0.976, 0.978], [0.970, 0.972, 0.973]


def test_comparisons_are_paired_t_tests_holm_corrected_over_the_level():
    rows = (runs("magnitude", 8, MAGNITUDE) + runs("gmp", 8, GMP) + runs("admm", 8, ADMM)
            + runs("dense", 1, [0.99, 0.99, 0.99]) + runs("gmp", 16, [0.5, 0.6, 0.7]))
    pairs = comparisons(rows, 8)
    assert [(p["a"], p["b"]) for p in pairs] == [("admm", "gmp"), ("admm", "magnitude"),
                                                 ("gmp", "magnitude")]  # a: the higher mean
    accs = {"admm": ADMM, "gmp": GMP, "magnitude": MAGNITUDE}
    raw = [ttest_rel(accs[p["a"]], accs[p["b"]]).pvalue for p in pairs]
    assert [p["p"] for p in pairs] == pytest.approx(raw, rel=1e-9)
    assert raw == pytest.approx([0.1382725, 0.0349404, 0.0050633], abs=1e-7)
    assert [p["p_holm"] for p in pairs] == pytest.approx(
        [raw[0], 2 * raw[1], 3 * raw[2]], rel=1e-9)
    assert [p["relation"] for p in pairs] == ["≈", "≈", ">"]  # 0.0349 alone would be a claim
    first = pairs[0]
    assert (first["level"], first["n"]) == (8.0, 3)
    assert first["mean"] == pytest.approx(0.005)  # differences 0.006, 0.008, 0.001
    assert first["std"] == pytest.approx(statistics.stdev([0.006, 0.008, 0.001]))
    assert first["poi"] == pytest.approx(1.0)  # every admm seed above every gmp seed
    assert comparisons(rows, 16) == []  # one method there
    assert comparisons(rows, 32) == []


def test_relation_is_the_holm_p_strictly_below_alpha():
    rows = runs("magnitude", 8, MAGNITUDE) + runs("gmp", 8, GMP) + runs("admm", 8, ADMM)
    p_holm = [p["p_holm"] for p in comparisons(rows, 8)]
    assert ALPHA == 0.05 and comparisons(rows, 8, ALPHA) == comparisons(rows, 8)
    assert [p["relation"] for p in comparisons(rows, 8, alpha=p_holm[2])] == ["≈", "≈", "≈"]
    assert [p["relation"] for p in comparisons(rows, 8, alpha=0.07)] == ["≈", ">", ">"]
    assert [p["relation"] for p in comparisons(rows, 8, alpha=0.2)] == [">", ">", ">"]
    assert [p["p_holm"] for p in comparisons(rows, 8, alpha=0.2)] == p_holm  # alpha: no effect


def test_the_holm_family_is_every_pair_of_the_level_and_no_other():
    rows = runs("magnitude", 8, MAGNITUDE) + runs("gmp", 8, GMP)
    alone = comparisons(rows, 8)[0]
    assert alone["p_holm"] == pytest.approx(alone["p"])  # a family of one
    with_admm = comparisons(rows + runs("admm", 8, ADMM), 8)
    assert with_admm[2]["p"] == alone["p"] and with_admm[2]["p_holm"] == pytest.approx(
        3 * alone["p"])
    other_level = comparisons(rows + runs("admm", 16, ADMM) + runs("gmp", 16, GMP), 8)
    assert other_level[0]["p_holm"] == alone["p_holm"]


def test_comparisons_leave_interpolated_rows_out():
    rows = (runs("magnitude", 8, MAGNITUDE) + runs("gmp", 8, GMP)
            + runs("grda", 8, [0.99, 0.99, 0.99], interpolated=True))
    admm = runs("admm", 8, ADMM)
    admm[2].update(interpolated=True, test_accuracy=0.5)  # counted, it would change every figure
    pairs = comparisons(rows + admm, 8)
    assert all("grda" not in (p["a"], p["b"]) for p in pairs)  # no measured row
    assert len(pairs) == 3
    admm_gmp = next(p for p in pairs if {p["a"], p["b"]} == {"admm", "gmp"})
    assert admm_gmp["n"] == 2 and admm_gmp["mean"] == pytest.approx(0.007)  # seeds 0, 1
    assert admm_gmp["p"] == pytest.approx(ttest_rel(ADMM[:2], GMP[:2]).pvalue)
    assert admm_gmp["poi"] == 1.0  # over admm's 2 measured seeds and gmp's 3 (6/9 with 0.5)
    assert (admm_gmp["a"], admm_gmp["b"]) == ("admm", "gmp")  # measured means 0.9825, 0.9763
    one_seed = comparisons(runs("magnitude", 8, MAGNITUDE) + admm[:1], 8)
    assert one_seed == []  # fewer than 2 common measured seeds: no pair, out of the family


def test_a_difference_without_spread_has_p_zero_and_none_p_one():
    # binary fractions: the differences are exactly 0.125, their std exactly 0
    rows = (runs("gmp", 8, [0.5, 0.75, 0.625]) + runs("magnitude", 8, [0.375, 0.625, 0.5])
            + runs("copy", 8, [0.375, 0.625, 0.5]))
    pairs = comparisons(rows, 8)
    gmp_magnitude = next(p for p in pairs if p["a"] == "gmp" and p["b"] == "magnitude")
    assert gmp_magnitude["std"] == 0.0 and gmp_magnitude["mean"] == 0.125
    assert gmp_magnitude["p"] == 0.0 and gmp_magnitude["p_holm"] == 0.0
    assert gmp_magnitude["relation"] == ">"
    same = next(p for p in pairs if {p["a"], p["b"]} == {"copy", "magnitude"})
    assert (same["mean"], same["std"], same["p"], same["relation"]) == (0.0, 0.0, 1.0, "≈")
    assert (same["a"], same["b"]) == ("copy", "magnitude")  # a tie on the mean: by name
    assert same["poi"] == pytest.approx(0.5)


def pairs_of(*claims: tuple[str, str, str]) -> list[dict]:
    """`comparisons`-like pairs from (a, relation, b)."""
    return [{"a": a, "b": b, "relation": rel} for a, rel, b in claims]


def test_groups_place_each_method_by_the_leader_alone():
    means = {"A": 0.90, "B": 0.89, "C": 0.88}
    # A ≈ B and B ≈ C, A > C: chaining neighbours would give one group, the leader two
    pairs = pairs_of(("A", "≈", "B"), ("B", "≈", "C"), ("A", ">", "C"))
    assert groups(pairs, means) == [["A", "B"], ["C"]]
    assert groups(pairs_of(("A", "≈", "B"), ("B", ">", "C"), ("A", "≈", "C")), means) == [
        ["A", "B", "C"]]
    assert groups(pairs_of(("A", ">", "B"), ("B", ">", "C"), ("A", ">", "C")), means) == [
        ["A"], ["B"], ["C"]]
    assert groups([], {}) == []


def test_a_method_not_compared_with_the_leader_starts_a_later_group():
    means = {"A": 0.90, "D": 0.895, "B": 0.89, "C": 0.85}
    pairs = pairs_of(("A", "≈", "B"), ("A", ">", "C"), ("B", "≈", "C"))  # D: no pair
    assert groups(pairs, means) == [["A", "B"], ["D"], ["C"]]
    pairs += pairs_of(("D", "≈", "C"))
    assert groups(pairs, means) == [["A", "B"], ["D", "C"]]


def test_groups_of_the_comparisons_of_rows():
    rows = runs("magnitude", 8, MAGNITUDE) + runs("gmp", 8, GMP) + runs("admm", 8, ADMM)
    means = {s["method"]: s["test_accuracy_mean"] for s in summarize(rows)}
    # Holm: only gmp > magnitude; magnitude is not separated from the leader admm
    assert groups(comparisons(rows, 8), means) == [["admm", "gmp", "magnitude"]]
    assert groups(comparisons(rows, 8, alpha=0.07), means) == [["admm", "gmp"], ["magnitude"]]
    assert groups(comparisons(rows, 8, alpha=0.2), means) == [["admm"], ["gmp"],
                                                               ["magnitude"]]


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
    for call in (lambda: summarize(rows), lambda: comparisons(rows, 8),
                 lambda: paired_difference(rows, "admm", "gmp", 8)):
        with pytest.raises(ValueError, match=r"\(method='admm', level=8.0, seed=0\): key "
                                             r"'test_accuracy'"):
            call()


def test_a_run_given_twice_is_refused():
    rows = [run("admm", 8, 0, 0.9), run("admm", 8, 0, 0.91)]
    with pytest.raises(ValueError, match=r"the same .method, level, seed. comes twice"):
        validate_rows(rows)
