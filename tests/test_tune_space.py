"""Search spaces and tuned/ files: what params.yaml may say under tune:, and how a tuned file
is laid over methods.<key>. No storage and no training here: these are load-time checks."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, small_params

from sparsebench.methods import METHODS
from sparsebench.pipeline.cli import main
from sparsebench.suite.load import load_params
from sparsebench.suite.tuned import TunedFile, read_tuned, write_tuned
from sparsebench.util.errors import UsageError

DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def _with_space(tmp_path, key, space, **tune):
    raw = yaml.safe_load(small_params(tmp_path).read_text())
    raw["tune"].update(tune)
    raw["tune"]["spaces"] = {key: space}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "params.yaml"


def test_every_method_with_knobs_beyond_its_level_has_a_space():
    spaces = DEFAULT["tune"]["spaces"]
    # dense has nothing to tune; magnitude and random have nothing once a level sets the target
    assert set(spaces) == set(DEFAULT["methods"]) - {"dense", "magnitude", "random"}
    params, _ = load_params(ROOT / "params.yaml")
    assert params.tune.spaces["grda"]["mu"].low > 0.5 and params.tune.spaces["grda"]["mu"].high < 1
    assert params.tune.spaces["admm"]["rho"].log and "rho_growth" in params.tune.spaces["admm"]


@pytest.mark.parametrize("space, expected", [
    ({"rho": {"low": 0.1, "high": 0.01}},
     "tune.spaces.admm.rho: low 0.1 >= high 0.01 is "
     "an empty or inverted range; allowed: low < high"),
    ({"rho": {"low": 0.01, "high": 0.01}}, "low 0.01 >= high 0.01 is an empty or inverted range"),
    ({"rho": {"low": 0.0, "high": 0.1, "log": True}},
     "log needs low > 0, got low 0.0; allowed: 0 < low < high"),
    ({"rho": {"choices": []}}, "choices is empty; allowed: a list of one value or more"),
    ({"rho": {"low": 0.1}}, "low and high are both needed"),
    ({"rhoo": {"low": 0.01, "high": 0.1}},
     "tune.spaces.admm.rhoo: unknown parameter 'rhoo' of method admm; did you mean rho? allowed:"),
    ({"iterations": {"low": 1.5, "high": 4}},
     "tune.spaces.admm.iterations: 'iterations' is an integer, got low 1.5"),
    ({"target_sparsity": {"low": 0.9, "high": 1.0}},
     "tune.spaces.admm.target_sparsity: 1.0 is not allowed by methods.admm (methods.admm."
     "target_sparsity: 1.0 is not allowed; input should be less than 1)"),
    ({"optimizer": {"low": 0.1, "high": 1.0}}, "'optimizer' is a section; allowed: one of its"),
    ({"scope": {"low": 0.1, "high": 1.0}}, "'scope' is not a number, so low/high is not allowed"),
    ({"rho": {"low": 0.01, "high": 0.1, "lo": 1}}, "tune.spaces.admm.rho.lo: unknown key"),
])
def test_a_bad_space_is_refused_in_one_line(tmp_path, space, expected):
    with pytest.raises(UsageError) as err:
        load_params(_with_space(tmp_path, "admm", space))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_a_space_for_a_key_not_under_methods_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"tune\.spaces\.lottery: unknown method key; allowed: "):
        load_params(_with_space(tmp_path, "lottery", {"rho": {"low": 0.1, "high": 1}}))


def test_dotted_nested_and_integer_and_choice_parameters_are_accepted(tmp_path):
    params, _ = load_params(_with_space(tmp_path, "gmp", {
        "optimizer.lr": {"low": 0.001, "high": 0.1, "log": True},
        "frequency": {"low": 1, "high": 4},
        "scope": {"choices": ["layer", "global"]}}))
    assert set(params.tune.spaces["gmp"]) == {"optimizer.lr", "frequency", "scope"}


def test_a_space_follows_the_method_named_by_a_user_key(tmp_path):
    """A new key (``grda_fast: {method: grda}``) is tunable without code: its class decides."""
    raw = yaml.safe_load(small_params(tmp_path).read_text())
    raw["methods"]["grda_fast"] = {"method": "grda", "epochs": 1}
    raw["tune"]["spaces"] = {"grda_fast": {"mu": {"low": 0.51, "high": 0.9}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params, _ = load_params(tmp_path / "params.yaml")
    assert "grda_fast" in params.tune.spaces
    raw["tune"]["spaces"] = {"grda_fast": {"rho": {"low": 0.1, "high": 0.9}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UsageError, match="unknown parameter 'rho' of method grda"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"dense"}))
def test_every_registered_method_has_tunable_parameters(name, tmp_path):
    """The tuner needs no code per method: every registered class exposes number fields."""
    fields = [f for f, info in METHODS[name].Params.model_fields.items()
              if info.annotation in (int, float)]
    assert fields, name


def _tuned(key="admm", **params):
    return TunedFile(method=key, study=f"default-{key}-accuracy_at_sparsity",
                     objective="accuracy_at_sparsity", target_sparsity=0.95, seed=0,
                     finished_trials=20, best={"trial": 7, "val_accuracy": 0.98, "sparsity": 0.95},
                     handset={"trial": 0, "val_accuracy": 0.97, "sparsity": 0.95},
                     params=params or {"rho": 0.002, "optimizer.lr": 0.0005})


def test_a_tuned_file_is_laid_over_its_method_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = small_params(tmp_path)
    write_tuned(_tuned())
    _, methods = load_params(path)
    assert methods["admm"].rho == 0.002 and methods["admm"].optimizer.lr == 0.0005
    assert methods["admm"].rho_growth == 1.5  # untuned keys keep params.yaml's value
    assert methods["admm"].optimizer.name == "adam"
    assert methods["admm_l1"].rho == 0.001
    _, handset = load_params(path, tuned=False)
    assert handset["admm"].rho == 0.001
    assert read_tuned("admm").best.trial == 7 and read_tuned("gmp") is None


@pytest.mark.parametrize("content, expected", [
    (_tuned(rho=-1.0).model_dump(),
     "tuned/admm.yaml: methods.admm.rho: -1.0 is not allowed; input should be greater than"),
    (_tuned(rhoo=0.1).model_dump(), "tuned/admm.yaml: params.rhoo: unknown parameter 'rhoo'"),
    ({**_tuned().model_dump(), "method": "grda"},
     "tuned/admm.yaml: method: 'grda' is not allowed; allowed: 'admm'"),
    ({**_tuned().model_dump(), "extra": 1}, "tuned/admm.yaml: extra: unknown key"),
    ("just text", "tuned/admm.yaml: 'just text' is not allowed"),
])
def test_a_bad_tuned_file_is_refused_naming_the_file(tmp_path, monkeypatch, capsys, content,
                                                     expected):
    monkeypatch.chdir(tmp_path)
    path = small_params(tmp_path)
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "admm.yaml").write_text(yaml.safe_dump(content))
    assert main(["check-params", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
