"""Every rule of params.yaml, each with a bad value and its boundary: `load_params` (what every
stage and ``sparsebench check-params`` run first) refuses the bad value in one line naming the
key, the value and what is allowed, and accepts the boundary."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from sparsebench.pipeline.cli import main
from sparsebench.suite.load import load_params
from sparsebench.util.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def _set(path: str, value) -> Callable[[dict], None]:
    """A change of the default params: ``value`` at the dotted ``path``."""
    def change(params: dict) -> None:
        *parents, leaf = path.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return change


def chain_hooks(*changes: Callable[[dict], None]) -> Callable[[dict], None]:
    def change(params: dict) -> None:
        for c in changes:
            c(params)
    return change


def _method(key: str, cfg: dict) -> Callable[[dict], None]:
    return lambda params: params["methods"].__setitem__(key, cfg)


def _load(tmp_path: Path, change: Callable[[dict], None]):
    params = copy.deepcopy(DEFAULT)
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params(path)


# (rule, the bad change, the message it must give, the boundary change that is accepted)
RULES = [
    ("finite: a learning rate", _set("pretrain.optimizer.lr", float("inf")),
     r"^pretrain\.optimizer\.lr: inf is not allowed; input should be a finite number$",
     _set("pretrain.optimizer.lr", 1e30)),
    ("finite: a regularisation strength", _set("methods.grda.c", float("inf")),
     r"^methods\.grda\.c: inf is not allowed; input should be a finite number$",
     _set("methods.grda.c", 1e30)),
    ("finite: NaN", _set("methods.linbreg.lam", float("nan")),
     r"^methods\.linbreg\.lam: nan is not allowed; input should be a finite number$",
     _set("methods.linbreg.lam", 0.0)),
    ("admm: rho_max >= rho", _set("methods.admm.rho_max", 0.0009),
     r"^methods\.admm: rho_max 0\.0009 < rho 0\.001; allowed: rho_max >= rho$",
     _set("methods.admm.rho", 0.1)),  # = rho_max (and the tuning space's high end)
    ("admm_l1 inherits it", _set("methods.admm_l1.rho_max", 0.0001),
     r"^methods\.admm_l1: rho_max 0\.0001 < rho 0\.001; allowed: rho_max >= rho$",
     _set("methods.admm_l1.rho", 0.1)),
    ("sas_admm: last <= iterations", _set("methods.sas_admm.last", 24),
     r"^methods\.sas_admm: last 24 > iterations 23: no iterate would be averaged; "
     r"allowed: 0 <= last <= iterations$",
     _set("methods.sas_admm.last", 23)),
    ("data: val_size < the training set", _set("data.val_size", 60_000),
     r"^data\.val_size: 60000 is not allowed; mnist has 60000 training samples; "
     r"allowed: 1 \.\. 59999$",
     chain_hooks(_set("data.val_size", 59_999), _set("budget", None))),  # sas_admm: 1 sample
    ("device: not a device", _set("device", "tpu"),
     r"^device: 'tpu' is not a device; allowed here: auto, cpu", _set("device", "cpu")),
    ("device: not here", _set("device", f"cuda:{torch.cuda.device_count()}"),
     r"^device: 'cuda:\d+' is not available here; allowed here: auto, cpu",
     _set("device", "auto")),
    ("a method's retrain override: the shared rules",
     _set("methods.gmp.retrain.optimizer", {"lr": -1}),
     r"^methods\.gmp\.retrain\.optimizer\.lr: -1 is not allowed; input should be greater "
     r"than 0$",
     _set("methods.gmp.retrain.optimizer", {"lr": 1e-9})),
    ("a method's retrain override: the cross-field rules",
     _set("methods.gmp.retrain.optimizer", {"momentum": 0.0}),  # the shared nesterov: true
     r"^methods\.gmp\.retrain\.optimizer: nesterov: true needs momentum > 0",
     _set("methods.gmp.retrain.optimizer", {"momentum": 0.0, "nesterov": False})),
    ("optimizer: nesterov needs momentum", _set("pretrain.optimizer.momentum", 0.0),
     r"^pretrain\.optimizer: nesterov: true needs momentum > 0 \(got momentum 0\)",
     _set("pretrain.optimizer.momentum", 1e-6)),
    ("optimizer: betas in [0, 1)", _set("methods.admm.optimizer.betas", [0.9, 1.0]),
     r"^methods\.admm\.optimizer\.betas\.1: 1\.0 is not allowed; input should be less than 1$",
     _set("methods.admm.optimizer.betas", [0.0, 0.9999])),
    ("a method key: no path parts", _method("..", {"method": "magnitude"}),
     r"^methods: the key '\.\.' is not allowed; allowed: letters, digits, _ and -",
     _method("magnitude_2", {"method": "magnitude", "retrain": {"epochs": 12}})),
    ("a method key: no slash", _method("a/b", {"method": "magnitude"}),
     r"^methods: the key 'a/b' is not allowed", _method("a-b", {"method": "magnitude",
                                                               "retrain": {"epochs": 12}})),
    ("a method key: no leading dash", _method("-x", {"method": "magnitude"}),
     r"^methods: the key '-x' is not allowed", _method("x", {"method": "magnitude",
                                                            "retrain": {"epochs": 12}})),
    ("a method key: at most 64 characters", _method("m" * 65, {"method": "magnitude"}),
     r"^methods: the key 'm{65}' is not allowed",
     _method("m" * 64, {"method": "magnitude", "retrain": {"epochs": 12}})),
    ("the suite name becomes a path", _set("suite", "../x"),
     r"^suite: the value '\.\./x' is not allowed; allowed: letters, digits",
     _set("suite", "x_1")),
    ("seeds are non-negative", _set("seeds", [-1, 0]),
     r"^seeds\.0: -1 is not allowed; input should be greater than or equal to 0$",
     _set("seeds", [0])),
    ("gmp: initial_sparsity up to the lowest level", _set("methods.gmp.initial_sparsity", 0.9),
     r"^methods\.gmp\.initial_sparsity: 0\.9 is not allowed; it is above the lowest level's "
     r"sparsity 0\.875; allowed: 0 \.\. 0\.875$",
     _set("methods.gmp.initial_sparsity", 0.875)),
    ("tracking.uri: a store MLflow can track to", _set("tracking.uri", "ftp://host/mlruns"),
     r"^tracking\.uri: 'ftp://host/mlruns' is not allowed; the scheme ftp: has no MLflow "
     r"tracking store; allowed: null \(SQLite under mlruns/\), sqlite:///<file>, ",
     _set("tracking.uri", "sqlite:///mlruns/mlflow.db")),
    ("budget: the longest run", _set("budget", 23),
     r"^methods\.dense: 24 epochs a run \(12 pretrain \+ 0 prune \+ 12 retrain\) is over the "
     r"suite's budget; allowed: at most budget: 23$",
     _set("budget", 24)),
]


def test_the_default_params_are_valid():
    params, methods = load_params(ROOT / "params.yaml")
    assert len(methods) == 11 and params.seeds == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("bad", "message", "boundary"), [r[1:] for r in RULES],
                         ids=[r[0] for r in RULES])
def test_each_rule_refuses_its_bad_value_and_accepts_its_boundary(tmp_path, bad, message,
                                                                  boundary):
    with pytest.raises(UsageError) as info:
        _load(tmp_path, bad)
    text = str(info.value)
    assert "\n" not in text and re.search(message, text), text
    _load(tmp_path, boundary)


def test_check_params_names_what_it_validated(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = copy.deepcopy(DEFAULT)
    _set("seeds", [0])(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["check-params", "--params", "params.yaml"]) == 0
    assert capsys.readouterr().out == ("params.yaml: valid (11 methods, seeds 0, compression "
                                       "8, 16, 32, 64, 128)\n")
    _set("levels", {"sparsity": [0.5, 0.875]})(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["check-params", "--params", "params.yaml"]) == 0
    assert capsys.readouterr().out.endswith("seeds 0, sparsity 0.5, 0.875)\n")


def test_check_params_refuses_before_writing_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = copy.deepcopy(DEFAULT)
    _set("methods.sas_admm.last", 30)(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = sorted(p.name for p in tmp_path.iterdir())
    for stage in (["check-params"], ["prepare"], ["pretrain"], ["run", "--method", "admm"]):
        assert main([*stage, "--params", "params.yaml"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["sparsebench: error: methods.sas_admm: last 30 > iterations 23: no "
                       "iterate would be averaged; allowed: 0 <= last <= iterations"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


ALLOWED_URIS = ("null (SQLite under mlruns/), sqlite:///<file>, http(s)://<host>[:<port>], "
                "postgresql://, mysql:// or mssql://<user>@<host>/<database>, or databricks")


@pytest.mark.parametrize(("uri", "why"), [
    ("ftp://host/x", "the scheme ftp: has no MLflow tracking store"),
    ("s3://bucket/mlruns", "the scheme s3: has no MLflow tracking store"),
    ("nonsense", "a path or file: URI is the file store, which MLflow 3 refuses"),
    ("./mlruns", "a path or file: URI is the file store, which MLflow 3 refuses"),
    ("file:///tmp/mlruns", "a path or file: URI is the file store, which MLflow 3 refuses"),
    ("", "it is empty (null selects the default store)"),
    (" sqlite:///mlflow.db", "it has leading or trailing spaces"),
    ("sqlite://", "it is not a complete sqlite: URI"),
    ("http://", "it is not a complete http: URI"),
    ("postgresql://", "it is not a complete postgresql: URI"),
])
def test_check_params_refuses_a_tracking_uri_mlflow_cannot_use(tmp_path, monkeypatch, capsys,
                                                                uri, why):
    monkeypatch.chdir(tmp_path)
    params = copy.deepcopy(DEFAULT)
    _set("tracking.uri", uri)(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in (["check-params"], ["pretrain"]):  # every stage loads params first
        assert main([*stage, "--params", "params.yaml"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"sparsebench: error: tracking.uri: {uri!r} is not allowed; {why}; "
                       f"allowed: {ALLOWED_URIS}"], err
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]


@pytest.mark.parametrize("uri", [
    None, "sqlite:///mlruns/mlflow.db", "sqlite:////abs/mlflow.db", "http://127.0.0.1:5000",
    "https://mlflow.example.com/", "postgresql://user:pw@db:5432/mlflow",
    "postgresql+psycopg2://user@db/mlflow", "mysql+pymysql://user@db/mlflow",
    "mssql+pyodbc://user@db/mlflow", "databricks", "databricks://profile",
])
def test_check_params_accepts_the_tracking_uris_mlflow_can_use(tmp_path, monkeypatch, capsys,
                                                               uri):
    monkeypatch.chdir(tmp_path)
    params = copy.deepcopy(DEFAULT)
    _set("tracking.uri", uri)(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["check-params", "--params", "params.yaml"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("params.yaml: valid (")
