"""Levels: the per-layer rule, the suite's level list and each bad input, and the calibration's
search (interpolation, bracketing, a level it cannot reach)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import small_params

from sparsebench.core.levels import layer_densities, layer_targets, level_name, within
from sparsebench.core.sparsity import keep_count
from sparsebench.pipeline.calibrate import Trial, next_guess, settle
from sparsebench.pipeline.cli import main
from sparsebench.util.errors import UsageError

SIZES = {"fc1": 235200, "fc2": 30000, "fc3": 1000}  # LeNet-300-100


@pytest.mark.parametrize("level", [8, 16, 32, 64, 128, 71.2])
def test_the_level_holds_over_all_layers_with_the_classifier_floor(level):
    d = layer_densities(SIZES, level, classifier_density=0.1)
    kept = sum(d[n] * SIZES[n] for n in SIZES)
    assert kept == pytest.approx(sum(SIZES.values()) / level, rel=1e-9)
    assert d["fc3"] >= 0.1 - 1e-12
    kept_counts = sum(keep_count(SIZES[n], 1 - d[n]) for n in SIZES)  # what a prune keeps
    assert sum(SIZES.values()) / kept_counts == pytest.approx(level, rel=1e-3)


def test_at_128x_the_classifier_keeps_its_floor_and_the_others_pay_for_it():
    d = layer_densities(SIZES, 128, classifier_density=0.1)
    assert d["fc3"] == pytest.approx(0.1)  # 100 of 1,000 weights, not 8
    assert d["fc1"] == pytest.approx(d["fc2"]) and d["fc1"] < 1 / 128


def test_without_a_floor_the_rule_is_uniform():
    d = layer_densities(SIZES, 16)
    assert all(v == pytest.approx(1 / 16) for v in d.values())


def test_a_profile_is_scaled_as_a_whole_and_capped_at_dense():
    profile = {"fc1": 0.01, "fc2": 0.1, "fc3": 1.0}
    d = layer_densities(SIZES, 20, profile=profile)
    assert d["fc3"] == 1.0  # capped
    assert d["fc2"] / d["fc1"] == pytest.approx(10)  # the ratios kept below the cap
    targets = layer_targets(SIZES, 20, profile=profile)
    assert targets["fc3"] == 0.0 and targets["fc1"] == pytest.approx(1 - d["fc1"])


def test_a_floor_that_alone_breaks_the_level_is_refused():
    with pytest.raises(UsageError, match=r"levels.classifier_density: 0.9 keeps 900 weights"):
        layer_densities({"a": 100, "b": 1000}, 10, classifier_density=0.9)


def test_level_names_and_tolerance():
    assert [level_name(c) for c in (8, 71.2, 128.0)] == ["c8", "c71.2", "c128"]
    assert within(8.39, 8, 0.05) and not within(8.41, 8, 0.05)
    assert not within(math.inf, 8, 0.05)


@pytest.mark.parametrize("levels, expected", [
    ({"compression": []}, "levels.compression: [] is not allowed; the list is empty"),
    ({"compression": [16, 8]}, "levels.compression: [16, 8] is not allowed; the levels must be "
                               "strictly increasing"),
    ({"compression": [8, 8]}, "the levels must be strictly increasing"),
    ({"compression": [0.5, 8]}, "levels.compression.0: 0.5 is not allowed; input should be "
                                "greater than 1"),
    ({"compression": [1, 8]}, "levels.compression.0: 1 is not allowed; input should be greater "
                              "than 1"),
    ({"sparsity": [0.9, 1.0]}, "levels.sparsity.1: 1.0 is not allowed; input should be less "
                               "than 1"),
    ({"sparsity": [0.0, 0.9]}, "levels.sparsity.0: 0.0 is not allowed; input should be greater "
                               "than 0"),
    ({"sparsity": [-0.5]}, "levels.sparsity.0: -0.5 is not allowed"),
    ({"compression": [8], "sparsity": [0.9]}, "levels: give the levels as compression "
                                              "or as sparsity (exactly one)"),
    ({"classifier_density": 0.1}, "levels: give the "
                                  "levels as compression or as sparsity"),
    ({"compression": [8, 16], "tolerance": 0}, "levels.tolerance: 0 is not allowed"),
])
def test_a_bad_level_list_is_one_line_and_exit_2(workspace, capsys, levels, expected):
    path = small_params(workspace, levels=levels)
    assert main(["check-params", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("subset, expected", [
    ([8, 24], "methods.gmp.levels: 24 is not a level of this suite; allowed: 8, 16, 32, 64, 128 "
              "(levels.compression)"),
    ([], "methods.gmp.levels: [] is not allowed"),
])
def test_a_method_naming_a_level_the_suite_lacks_is_refused(workspace, capsys, subset,
                                                            expected):
    path = small_params(workspace)
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["gmp"]["levels"] = subset
    path.write_text(yaml.safe_dump(raw))
    assert main(["check-params", "--params", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_a_global_scope_is_refused_under_the_per_layer_rule(workspace, capsys):
    path = small_params(workspace)
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["magnitude"]["scope"] = "global"
    path.write_text(yaml.safe_dump(raw))
    assert main(["check-params", "--params", str(path)]) == 2
    assert "methods.magnitude.scope: 'global' is not allowed" in capsys.readouterr().err


def test_sparsity_levels_are_the_same_levels_as_compression(workspace):
    from sparsebench.suite.load import load_params

    path = small_params(workspace, levels={"sparsity": [0.875, 0.9375]})
    params, _ = load_params(path)
    assert params.levels.ratios() == pytest.approx([8, 16])


def test_an_over_budget_method_is_refused_before_any_stage(workspace, capsys):
    path = small_params(workspace, tracking={"enabled": False}, budget=7)
    for stage in (["check-params"], ["prepare"], ["run", "--method", "magnitude"]):
        assert main([*stage, "--params", str(path)]) == 2
        err = capsys.readouterr().err
        assert "methods.admm: 8 epochs a run (2 pretrain + 2 prune + 4 retrain) is over the " \
               "suite's budget; allowed: at most budget: 7" in err, err
    assert not (workspace / "data").exists() and not (workspace / "runs").exists()


def test_the_budget_boundary_is_the_longest_run(workspace, capsys):
    # the small suite's longest run: dense, 2 pretrain + 12 more
    path = small_params(workspace, tracking={"enabled": False}, budget=14)
    assert main(["check-params", "--params", str(path)]) == 0
    path = small_params(workspace, tracking={"enabled": False}, budget=13)
    assert main(["check-params", "--params", str(path)]) == 2
    assert "methods.dense: 14 epochs a run (2 pretrain + 0 prune + 12 retrain)" in \
        capsys.readouterr().err


def _t(value: float, compression: float, val_accuracy: float = 0.9) -> Trial:
    return Trial(value=value, compression=compression, val_accuracy=val_accuracy, round=1)


def test_the_next_guess_interpolates_in_log_log_between_the_points_around_the_level():
    history = [_t(0.001, 4.0), _t(0.01, 16.0)]
    assert next_guess(history, 8.0) == pytest.approx(math.sqrt(0.001 * 0.01))


def test_the_next_guess_steps_out_beyond_the_measured_range():
    history = [_t(0.001, 4.0), _t(0.01, 16.0)]
    assert next_guess(history, 64.0) == pytest.approx(0.04)
    assert next_guess(history, 2.0) == pytest.approx(0.00025)


def test_settle_reached_bracketed_and_unreachable():
    history = [_t(0.001, 7.0), _t(0.002, 8.2), _t(0.01, 50.0), _t(0.1, 90.0)]
    reached = settle(history, 8.0, 0.05)
    assert reached.status == "reached" and reached.value == 0.002
    bracketed = settle(history, 32.0, 0.05)
    assert bracketed.status == "bracketed"
    assert (bracketed.low.compression, bracketed.high.compression) == (8.2, 50.0)
    assert settle(history, 128.0, 0.05).status == "unreachable"  # every point is below it


def test_a_collapsed_run_neither_reaches_nor_brackets_a_level():
    """AdaBreg at lambda 10^6: 110x and 296x at 10-12% accuracy (chance 10%): with the floor,
    128x is unreachable, where those runs would have bracketed it; and they guide no guess."""
    from sparsebench.pipeline.calibrate import _guesses

    history = [_t(2.1, 65.7), _t(2.3, 70.5), _t(1.3e6, 110.8, 0.1056), _t(8.4e6, 296.1, 0.119)]
    assert settle(history, 128.0, 0.02).status == "bracketed"  # no floor: as before
    assert settle(history, 128.0, 0.02, floor=0.2).status == "unreachable"
    assert settle(history, 68.0, 0.02, floor=0.2).status == "bracketed"  # 65.7 and 70.5
    hit = [*history, _t(4e6, 127.0, 0.12)]  # at the level, but collapsed: no reach
    assert settle(hit, 128.0, 0.02, floor=0.2).status == "unreachable"
    # the next guess steps out from the strongest usable run (2.3), not from 8.4e6
    [(seed, guess, level)] = _guesses({0: history}, [128.0], 0.02, start=1.0, floor=0.2)
    assert (seed, level) == (0, 128.0) and 2.3 < guess <= 2.3 * 16
    # a guess that has run and collapsed is not run again: the level's search ends
    ran = [*history, _t(guess, 500.0, 0.1)]
    assert _guesses({0: ran}, [128.0], 0.02, start=1.0, floor=0.2) == []


def test_a_saturated_search_stops():
    from sparsebench.pipeline.calibrate import saturated

    assert saturated([_t(1.0, 99.0), _t(4.0, 100.2), _t(16.0, 100.3)], 128.0)
    assert not saturated([_t(1.0, 60.0), _t(4.0, 99.0)], 128.0)  # still climbing
    assert not saturated([_t(1.0, 99.0), _t(4.0, 99.1)], 64.0)  # past the level
    # grda seed 2 at 128x: 0.01322 -> 122.96x, 0.01378 -> 122.28x; then 0.01429 -> 128.85x
    assert not saturated([_t(0.01322, 122.96), _t(0.01378, 122.28)], 128.0)


def test_a_calibration_that_cannot_reach_a_level_stops_and_says_so(workspace, capsys):
    """LinBreg from a 1% sparse initialisation cannot pass 100x: the search runs its rounds,
    records the level as unreachable, and the method's runs skip it."""
    import json

    path = small_params(workspace, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["levels"] = {"compression": [2, 1000]}
    raw["methods"] = {"linbreg": {**raw["methods"]["linbreg"], "epochs": 1,
                                  "init_density": 0.01, "retrain": {"epochs": 0}}}
    raw["tune"]["spaces"] = {}
    raw["budget"] = None
    path.write_text(yaml.safe_dump(raw))
    args = ["--params", str(path)]
    assert main(["prepare", *args]) == 0
    assert main(["calibrate", *args, "--method", "linbreg", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    for seed in (0, 1):  # each seed searched on its own
        assert f"calibrate linbreg: seed {seed} level c1000 unreachable after 2 rounds" in out
    found = yaml.safe_load((workspace / "calibrated" / "linbreg.yaml").read_text())
    assert set(found["seeds"]) == {0, 1}
    assert {e["levels"]["c1000"]["status"] for e in found["seeds"].values()} == {"unreachable"}
    assert found["trials"] == sum(len(e["history"]) for e in found["seeds"].values()) >= 8
    assert main(["run", *args, "--method", "linbreg"]) == 0
    levels = json.loads((workspace / "evaluation" / "linbreg.json").read_text())["levels"]
    assert "c1000" not in levels


def test_one_sided_points_step_along_every_seeds_slope():
    """A seed with points below the level only: the step from its nearest point follows the
    least-squares slope (log compression on log strength) of all seeds' points near the level,
    not a fixed factor."""
    from sparsebench.pipeline.calibrate import _slope

    reference = [_t(0.001, 4.0), _t(0.002, 8.0), _t(0.004, 16.0)]  # slope 1: c = 4000 x
    assert _slope(reference, 8.0) == pytest.approx(1.0)
    own = [_t(0.0015, 5.0)]  # this seed: 5x at 0.0015, so 8x needs 0.0015 * 8 / 5
    assert next_guess(own, 8.0, reference) == pytest.approx(0.0024)
    assert next_guess(own, 8.0) == pytest.approx(0.0015 * 4)  # no reference: STEP_OUT
    steep = [_t(0.001, 4.0), _t(0.002, 16.0)]  # slope 2: half the step in log strength
    assert next_guess([_t(0.001, 4.0)], 8.0, steep) == pytest.approx(0.001 * math.sqrt(2))
    assert _slope([_t(0.001, 9.0), _t(0.002, 8.0)], 8.0) is None  # falling: no slope


def test_a_seed_without_points_starts_from_the_other_seeds_points():
    from sparsebench.pipeline.calibrate import _guesses

    histories = {0: [_t(0.001, 4.0), _t(0.004, 16.0)], 1: []}
    todo = _guesses(histories, [8.0], 0.02, start=0.05)
    assert todo == [(0, pytest.approx(0.002), 8.0), (1, pytest.approx(0.002), 8.0)]
    assert _guesses({0: [], 1: []}, [8.0], 0.02, start=0.05) == [  # aimed at no level
        (s, pytest.approx(0.05 * f), None) for s in (0, 1) for f in (0.25, 1.0, 4.0, 16.0)]


def test_each_seed_runs_its_own_strength(pretrained_workspace, monkeypatch):
    """A calibration per seed: each seed's run at a level takes that seed's strength; a seed
    the file lacks, or a file of one seed (as written before), is refused in one line."""
    from sparsebench.pipeline.calibrate import (
        CalibrationFile,
        LevelResult,
        SeedCalibration,
        read_calibration,
    )
    from sparsebench.suite.load import load_params
    from sparsebench.suite.plan import plan

    monkeypatch.chdir(pretrained_workspace)
    path = small_params(pretrained_workspace, tracking={"enabled": False}, seeds=[0, 1])
    params, methods = load_params(path)
    levels = params.levels.ratios(None)

    def entry(value):
        return SeedCalibration(history=[], levels={level_name(lv): LevelResult(
            level=lv, status="reached", value=value, compression=lv) for lv in levels})

    found = CalibrationFile(method="grda", strength="c", config_digest="x", tolerance=0.02,
                            trials=2, seeds={0: entry(0.01), 1: entry(0.02)})
    runs = plan(params, methods, "grda", found)
    assert {(r.spec.seed, r.spec.method.c) for r in runs} == {(0, 0.01), (1, 0.02)}
    only = found.model_copy(update={"seeds": {0: entry(0.01)}})
    with pytest.raises(UsageError, match=r"^calibrated/grda.yaml: no entry for seed 1; run "
                                         r"sparsebench calibrate --method grda$"):
        plan(params, methods, "grda", only)
    legacy = {"method": "grda", "strength": "c", "config_digest": "x", "seed": 0,
              "tolerance": 0.05, "trials": 1, "levels": {}, "history": []}
    (pretrained_workspace / "calibrated").mkdir(exist_ok=True)
    (pretrained_workspace / "calibrated" / "grda.yaml").write_text(yaml.safe_dump(legacy))
    with pytest.raises(UsageError, match=r"^calibrated/grda.yaml: calibrated on seed 0 alone; "
                                         r"allowed: a file with every seed's strengths; run "
                                         r"sparsebench calibrate --method grda again$"):
        read_calibration("grda", methods["grda"])


def _grda_at_2x(workspace: Path) -> tuple[Path, dict]:
    """A prepared suite of grda alone, one epoch a run, one level (2x) with a tolerance that
    takes any run of it: (its params file, its content)."""
    path = small_params(workspace, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["levels"] = {"compression": [2], "tolerance": 0.99}
    raw["methods"] = {"grda": {**raw["methods"]["grda"], "epochs": 1,
                               "retrain": {"epochs": 0}}}
    raw["tune"]["spaces"] = {}
    raw["budget"] = None
    path.write_text(yaml.safe_dump(raw))
    assert main(["prepare", "--params", str(path)]) == 0
    return path, raw


def test_a_calibration_counts_the_suites_cached_runs_and_a_killed_search_resumes(
        workspace, capsys):
    """The suite's own runs (checked by their fingerprint) and the trials of an unfinished
    search are measured points: a search whose every (seed, level) they already hit runs
    nothing; a calibration file and its progress file made for other parameters count for
    nothing."""
    from conftest import write_calibration

    from sparsebench.pipeline.calibrate import progress_path

    path, raw = _grda_at_2x(workspace)
    args = ["--params", str(path)]
    write_calibration(workspace, path, "grda", 0.001)
    assert main(["run", *args, "--method", "grda"]) == 0
    (workspace / "calibrated" / "grda.yaml").unlink()  # only the runs are left
    capsys.readouterr()
    assert main(["calibrate", *args, "--method", "grda"]) == 0
    out = capsys.readouterr().out
    assert "calibrate grda: 0 runs, 2 points in all" in out and "round 1" not in out
    found = yaml.safe_load((workspace / "calibrated" / "grda.yaml").read_text())
    assert {s: e["levels"]["c2"]["value"] for s, e in found["seeds"].items()} == {
        0: 0.001, 1: 0.001}
    assert not progress_path("grda").exists()

    raw["levels"]["tolerance"] = 0.01  # stricter: the runs above no longer count as hits
    path.write_text(yaml.safe_dump(raw))
    progress_path("grda").write_text(yaml.safe_dump({"config_digest": found["config_digest"],
                                                     "seeds": {0: {"history": [
                                                         {"value": 0.5, "compression": 2.0,
                                                          "val_accuracy": 0.9,
                                                          "round": 1}]}}}))
    assert main(["calibrate", *args, "--method", "grda", "--rounds", "1"]) == 0
    found = yaml.safe_load((workspace / "calibrated" / "grda.yaml").read_text())
    assert found["seeds"][0]["levels"]["c2"] == {  # the resumed trial hits, seed 1 searches
        "level": 2.0, "status": "reached", "value": 0.5, "low": None, "high": None,
        "compression": 2.0}
    assert any(t["round"] == 1 for t in found["seeds"][1]["history"])


def test_the_run_a_calibration_settles_on_is_the_pipelines_run(workspace, capsys):
    """A guess aimed at a level is the pipeline's own run of that seed: the one the search
    settles on is moved to runs/<key>/c<level>/seed<s>, where the run stage finds it cached
    (nothing trains), and the other trial runs are dropped."""
    from sparsebench.pipeline.calibrate import TRIALS

    path, _ = _grda_at_2x(workspace)
    args = ["--params", str(path)]
    (workspace / "calibrated").mkdir(exist_ok=True)
    (workspace / "calibrated" / ".grda.trials.yaml").write_text(yaml.safe_dump({
        "config_digest": __import__("sparsebench.pipeline.calibrate", fromlist=["x"])
        .config_digest("grda", __import__("sparsebench.suite.load", fromlist=["x"])
                       .load_params(path)[1]["grda"]),
        "seeds": {0: {"history": [{"value": 1e-9, "compression": 1.0, "val_accuracy": 0.9,
                                   "round": 1}]}}}))  # a point to aim from: seed 1 aims at 2x
    assert main(["calibrate", *args, "--method", "grda", "--rounds", "2"]) == 0
    found = yaml.safe_load((workspace / "calibrated" / "grda.yaml").read_text())
    assert all(e["levels"]["c2"]["status"] == "reached" for e in found["seeds"].values())
    assert not (workspace / TRIALS / "grda").exists()
    kept = json.loads((workspace / "runs" / "grda" / "c2" / "seed1" / "result.json")
                      .read_text())
    assert kept["params"]["c"] == found["seeds"][1]["levels"]["c2"]["value"]
    capsys.readouterr()
    assert main(["run", *args, "--method", "grda"]) == 0
    out = capsys.readouterr().out
    assert "run grda: 2 runs, 1 cached, 1 to train" in out  # seed 0's point is the seeded one


def test_the_arithmetic_digest_tells_thread_counts_apart_and_keeps_the_threads():
    from sparsebench.core.numerics import arithmetic_digest
    from sparsebench.run import environment

    before = torch.get_num_threads()
    one = arithmetic_digest(1)
    assert one == arithmetic_digest(1) and len(one) == 12
    assert arithmetic_digest(2) != one  # a reduction split over two threads rounds otherwise
    assert torch.get_num_threads() == before
    env = environment(torch.device("cpu"), 1, 2)
    assert env["arithmetic"] == one and env["cpu_capability"] == \
        torch.backends.cpu.get_cpu_capability()
    assert {"cpu", "cpu_id", "torch", "torch_git", "threads"} <= set(env)


def test_a_calibration_of_a_target_driven_method_is_refused(workspace, capsys):
    path = small_params(workspace, tracking={"enabled": False})
    assert main(["prepare", "--params", str(path)]) == 0
    assert main(["calibrate", "--params", str(path), "--method", "gmp"]) == 2
    assert "--method: 'gmp' takes its level as a target" in capsys.readouterr().err


def test_a_stale_calibration_is_refused(workspace, capsys):
    from conftest import write_calibration

    path = small_params(workspace, tracking={"enabled": False})
    write_calibration(workspace, path, "grda", 0.01)
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["grda"]["lr"] = 0.05  # the calibration was made for lr 0.1
    path.write_text(yaml.safe_dump(raw))
    assert main(["prepare", "--params", str(path)]) == 0
    assert main(["run", "--params", str(path), "--method", "grda"]) == 2
    assert "calibrated/grda.yaml: made for other parameters of methods.grda" in \
        capsys.readouterr().err


def test_a_missing_calibration_is_one_line(workspace, capsys):
    path = small_params(workspace, tracking={"enabled": False})
    assert main(["prepare", "--params", str(path)]) == 0
    assert main(["run", "--params", str(path), "--method", "adabreg"]) == 2
    assert "calibrated/adabreg.yaml: missing" in capsys.readouterr().err


def test_a_progressive_series_chains_its_levels_per_seed(pretrained_workspace, monkeypatch):
    """Each level of a progressive method starts from the previous level's run of its seed;
    the first from the pretrained model; its budget adds up the steps before it."""
    from sparsebench.suite.load import load_params
    from sparsebench.suite.plan import plan

    monkeypatch.chdir(pretrained_workspace)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(pretrained_workspace))
    path = small_params(pretrained_workspace, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["admm"].update(progressive=True, levels=[8, 16, 32])
    path.write_text(yaml.safe_dump(raw))
    params, methods = load_params(path)
    runs = plan(params, methods, "admm")
    assert [(r.spec.level, r.spec.seed) for r in runs] == [
        (8, 0), (8, 1), (16, 0), (16, 1), (32, 0), (32, 1)]
    by = {(r.spec.level, r.spec.seed): r for r in runs}
    for seed in (0, 1):
        first = by[8, seed]
        assert first.after is None and first.spec.pretrained.name == f"seed{seed}"
        assert first.spec.pretrained.parent.name == "pretrain"
        assert by[16, seed].after is first and by[16, seed].spec.pretrained == first.out
        assert by[32, seed].spec.pretrained == by[16, seed].out
    step = {"pretrain": 2, "prune": 2, "retrain": 4}
    assert first.budget == {**step, "total": 8}
    assert by[16, 0].budget == {**step, "previous": 6, "total": 14}
    assert by[32, 0].budget == {**step, "previous": 12, "total": 20}
    raw["methods"]["admm"]["progressive"] = False
    path.write_text(yaml.safe_dump(raw))
    params, methods = load_params(path)
    assert all(r.after is None and r.spec.pretrained.parent.name == "pretrain"
               for r in plan(params, methods, "admm"))


def test_a_method_runs_only_its_own_seeds(pretrained_workspace, monkeypatch):
    """methods.<key>.seeds: that method's plan has only those seeds (a progressive series
    too), the others keep the suite's; the key is in no dump, so neither the run's
    fingerprint config nor the calibration digest sees it."""
    from sparsebench.pipeline.calibrate import config_digest
    from sparsebench.suite.load import load_params
    from sparsebench.suite.plan import plan

    monkeypatch.chdir(pretrained_workspace)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(pretrained_workspace))
    path = small_params(pretrained_workspace, tracking={"enabled": False}, seeds=[0, 1, 2])
    raw = yaml.safe_load(path.read_text())
    _, before = load_params(path)
    raw["methods"]["admm"].update(progressive=True, levels=[8, 16], seeds=[2, 0])
    raw["methods"]["grda"]["seeds"] = [1]
    path.write_text(yaml.safe_dump(raw))
    params, methods = load_params(path)
    runs = plan(params, methods, "admm")
    assert [(r.spec.level, r.spec.seed) for r in runs] == [(8, 0), (8, 2), (16, 0), (16, 2)]
    assert runs[2].after is runs[0] and runs[3].after is runs[1]
    assert {r.spec.seed for r in plan(params, methods, "magnitude")} == {0, 1, 2}
    assert "seeds" not in runs[0].spec.config()["method"]
    assert config_digest("grda", methods["grda"]) == config_digest("grda", before["grda"])


@pytest.mark.parametrize("seeds, expected", [
    ([], "methods.sas_admm.seeds: [] is not allowed"),
    ([3], "methods.sas_admm.seeds: 3 is not a seed of this suite; allowed: a subset of 0, 1 "
          "(seeds)"),
    ([0, 0], "methods.sas_admm.seeds: [0, 0] repeats a seed; allowed: distinct seeds of 0, 1"),
    ([-1], "methods.sas_admm.seeds.0: -1 is not allowed"),
    ("0", "methods.sas_admm.seeds: '0' is not allowed"),
])
def test_a_bad_method_seed_list_is_one_line_and_exit_2(workspace, capsys, seeds, expected):
    path = small_params(workspace)
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["sas_admm"]["seeds"] = seeds
    path.write_text(yaml.safe_dump(raw))
    assert main(["check-params", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("key", ["grda", "dense"])
def test_progressive_is_refused_where_a_level_is_not_a_target(workspace, capsys, key):
    path = small_params(workspace)
    raw = yaml.safe_load(path.read_text())
    raw["methods"][key]["progressive"] = True
    path.write_text(yaml.safe_dump(raw))
    assert main(["check-params", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"methods.{key}.progressive: true is not allowed" in err, err


def _magnitude_workspace(pretrained_workspace: Path, tmp_path: Path,
                         monkeypatch) -> tuple[Path, dict]:
    """A copy of the pretrained workspace as the working directory, and its params (path, raw
    dict) with magnitude retraining 1 epoch a level."""
    import shutil

    for part in ("data", "runs"):
        shutil.copytree(pretrained_workspace / part, tmp_path / part)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    path = small_params(tmp_path, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["magnitude"]["retrain"] = {"epochs": 1}
    return path, raw


def test_a_progressive_series_runs_each_step_from_the_last(pretrained_workspace, tmp_path,
                                                            monkeypatch):
    """magnitude as a series: each step prunes the previous step's retrained model, whose
    pruned weights are exactly zero, so every mask lies inside the previous one; the budget
    adds up; run again, every step is cached."""
    from sparsebench.core.sparsity import load_masks

    path, raw = _magnitude_workspace(pretrained_workspace, tmp_path, monkeypatch)
    raw["methods"]["magnitude"].update(progressive=True, levels=[8, 16, 32])
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", "--method", "magnitude", "--params", str(path)]) == 0
    for seed in (0, 1):
        masks = [load_masks(tmp_path / "runs" / "magnitude" / level / f"seed{seed}" /
                            "masks.safetensors") for level in ("c8", "c16", "c32")]
        for before, after in itertools.pairwise(masks):
            assert all(torch.equal(after[n] & ~before[n], torch.zeros_like(after[n]))
                       for n in after)
            assert sum(int(m.sum()) for m in after.values()) < sum(
                int(m.sum()) for m in before.values())
        result = json.loads((tmp_path / "runs" / "magnitude" / "c32" / f"seed{seed}" /
                             "result.json").read_text())
        assert result["epochs"] == {"pretrain": 2, "previous": 2, "prune": 0, "retrain": 1,
                                    "total": 5}
    mtime = (tmp_path / "runs" / "magnitude" / "c32" / "seed0" / "result.json").stat().st_mtime
    assert main(["run", "--method", "magnitude", "--params", str(path)]) == 0
    assert (tmp_path / "runs" / "magnitude" / "c32" / "seed0" /
            "result.json").stat().st_mtime == mtime


def test_narrowing_a_methods_levels_keeps_its_other_runs(pretrained_workspace, tmp_path,
                                                         monkeypatch):
    """A method's own ``levels`` only pick which of the suite's levels it runs: narrowed, the
    levels it keeps are cache hits (result.json untouched) and the dropped one is removed; in
    a progressive series, the step whose previous step changed is trained again from it."""
    path, raw = _magnitude_workspace(pretrained_workspace, tmp_path, monkeypatch)
    raw["levels"]["compression"] = [8, 16, 32]
    root = tmp_path / "runs" / "magnitude"

    def run(**method) -> dict[str, float]:
        raw["methods"]["magnitude"].update(method)
        path.write_text(yaml.safe_dump(raw))
        assert main(["run", "--method", "magnitude", "--params", str(path)]) == 0
        return {f.parent.parent.name: f.stat().st_mtime_ns
                for f in root.glob("c*/seed0/result.json")}

    every = run()
    assert set(every) == {"c8", "c16", "c32"}
    narrowed = run(levels=[8, 32])
    assert narrowed == {"c8": every["c8"], "c32": every["c32"]}
    series = run(progressive=True, levels=[8, 16, 32])
    assert all(series[name] != every[name] for name in series)  # another spec: trained
    shorter = run(levels=[8, 32])
    assert shorter["c8"] == series["c8"] and shorter["c32"] != series["c32"]
    result = json.loads((root / "c32" / "seed0" / "result.json").read_text())
    assert result["epochs"]["previous"] == 1  # the 8x step's one retrain epoch alone


def test_a_series_step_starts_once_its_own_previous_step_is_done(pretrained_workspace,
                                                                  tmp_path, monkeypatch):
    """Two workers, two seeds: seed 1's first step does not end until seed 0's second step
    has ended, which the scheduler allows only if a step waits for its own previous step and
    not for the whole level (the waves it ran in before). Then every step is there."""
    import shutil
    import time

    import sparsebench.run as run_module

    for part in ("data", "runs"):
        shutil.copytree(pretrained_workspace / part, tmp_path / part)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    path = small_params(tmp_path, tracking={"enabled": False},
                        execution={"threads": 1, "workers": 2})
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["magnitude"].update(progressive=True, levels=[8, 16])
    raw["methods"]["magnitude"]["retrain"] = {"epochs": 1}
    path.write_text(yaml.safe_dump(raw))
    awaited = tmp_path / "runs" / "magnitude" / "c16" / "seed0" / "result.json"
    execute = run_module.execute

    def held(spec, *args, **kwargs):  # runs in the forked worker
        if spec.seed == 1 and spec.level == 8:
            deadline = time.monotonic() + 120
            while not awaited.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("seed 0's second step never ran beside seed 1's first")
                time.sleep(0.05)
        return execute(spec, *args, **kwargs)

    monkeypatch.setattr(run_module, "execute", held)
    assert main(["run", "--method", "magnitude", "--params", str(path)]) == 0
    for level in ("c8", "c16"):
        for seed in (0, 1):
            assert (tmp_path / "runs" / "magnitude" / level / f"seed{seed}" /
                    "result.json").exists()


def test_the_committed_calibrations_fit_the_committed_params():
    """A change to a method's parameters (or to what every method accepts) that makes
    calibrated/*.yaml stale would stop `make repro` at that method's stage: caught here."""
    import os

    from sparsebench.pipeline.calibrate import read_calibration
    from sparsebench.suite.load import load_params

    root = Path(__file__).resolve().parents[1]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        _, methods = load_params(root / "params.yaml")
        calibrated = sorted(p.stem for p in (root / "calibrated").glob("*.yaml"))
        assert calibrated
        for key in calibrated:
            assert read_calibration(key, methods[key]) is not None
    finally:
        os.chdir(cwd)


def test_zero_rounds_write_the_file_from_the_points_measured_so_far(workspace, capsys):
    """--rounds 0 runs nothing: the file is settled from an interrupted search's points (a
    seed without any is unreachable at every level); a negative count is refused."""
    from sparsebench.pipeline.calibrate import config_digest, progress_path
    from sparsebench.suite.load import load_params

    path, _ = _grda_at_2x(workspace)
    args = ["--params", str(path), "--method", "grda"]
    digest = config_digest("grda", load_params(path)[1]["grda"])
    progress_path("grda").parent.mkdir(exist_ok=True)
    progress_path("grda").write_text(yaml.safe_dump({"config_digest": digest, "seeds": {
        0: {"history": [{"value": 0.5, "compression": 2.0, "val_accuracy": 0.9, "round": 1}]}}}))
    capsys.readouterr()
    assert main(["calibrate", *args, "--rounds", "0"]) == 0
    assert "calibrate grda: 0 runs, 1 points in all" in capsys.readouterr().out
    found = yaml.safe_load((workspace / "calibrated" / "grda.yaml").read_text())
    assert found["seeds"][0]["levels"]["c2"]["value"] == 0.5
    assert found["seeds"][1]["levels"]["c2"]["status"] == "unreachable"
    assert not progress_path("grda").exists() and not (workspace / "runs" / "grda").exists()
    assert main(["calibrate", *args, "--rounds", "-1"]) == 2
    assert "--rounds: -1 is not allowed; allowed: at least 0" in capsys.readouterr().err
