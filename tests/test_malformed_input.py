"""Property tests: malformed params.yaml files and argument lists, fed to every stage.

Each mutation of the real params.yaml is malformed by construction (an unknown or misspelt
key, a value of the wrong type, a required key removed, broken YAML), and each argument list
has one bad part. The stage must answer in one line naming the key, exit with a non-zero code,
and never show a traceback or touch an output.
"""

from __future__ import annotations

import copy
import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml
from conftest import small_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsebench.pipeline.cli import main

STAGES = ["check-params", "prepare", "pretrain", "run", "calibrate", "report",
          "tune"]
PER_METHOD = {"run", "calibrate", "tune"}
REQUIRED = [("seeds",), ("pretrain",), ("retrain",), ("methods",), ("pretrain", "epochs"),
            ("levels",)]
FREE_KEYS = {("methods",), ("tune", "spaces")}  # keys there are names other keys refer to


def _paths(tree: dict, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the nested mappings in ``tree``."""
    out = []
    for key, value in tree.items():
        path = (*prefix, key)
        out.append(path)
        if isinstance(value, dict):
            out.extend(_paths(value, path))
    return out


def _parent(tree: dict, path: tuple) -> dict:
    for key in path[:-1]:
        tree = tree[key]
    return tree


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("base")
    return yaml.safe_load(small_params(root).read_text())


def _mutate(base: dict, data) -> tuple[str, str]:
    """A malformed params text, and the key (or part of it) the error must name."""
    kind = data.draw(st.sampled_from(["unknown", "typo", "wrong_type", "missing", "yaml",
                                      "not_mapping"]), label="kind")
    params = copy.deepcopy(base)
    paths = _paths(params)
    if kind == "unknown":
        mappings = [()] + [p for p in paths if isinstance(_parent(params, p)[p[-1]], dict)]
        where = data.draw(st.sampled_from(mappings), label="where")
        name = data.draw(st.from_regex(r"zz[a-z_]{1,8}", fullmatch=True), label="name")
        target = params
        for key in where:
            target = target[key]
        target[name] = 1
        return yaml.safe_dump(params), ".".join(map(str, (*where, name)))
    if kind == "typo":
        candidates = [p for p in paths if p[:-1] not in FREE_KEYS]
        path = data.draw(st.sampled_from(candidates), label="path")
        parent = _parent(params, path)
        parent[f"{path[-1]}_"] = parent.pop(path[-1])
        return yaml.safe_dump(params), ".".join(map(str, (*path[:-1], f"{path[-1]}_")))
    if kind == "wrong_type":
        leaves = [p for p in paths if not isinstance(_parent(params, p)[p[-1]], dict)]
        path = data.draw(st.sampled_from(leaves), label="path")
        _parent(params, path)[path[-1]] = {"not": ["a", "value"]}
        return yaml.safe_dump(params), ".".join(map(str, path))
    if kind == "missing":
        path = data.draw(st.sampled_from(REQUIRED), label="path")
        del _parent(params, path)[path[-1]]
        return yaml.safe_dump(params), ".".join(path)
    if kind == "yaml":
        text = yaml.safe_dump(params).splitlines()
        line = data.draw(st.integers(0, len(text)), label="line")
        text.insert(line, data.draw(st.sampled_from(["key: [unclosed", "  - : :", "\t- tab",
                                                     "a: b: c", "{"]), label="junk"))
        return "\n".join(text), "params"
    return data.draw(st.sampled_from(["", "- a list\n", "42\n", "just text\n"])), "params"


def _run(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(argv)
    torch.set_flush_denormal(False)  # the training stages flush; hypothesis draws floats next
    return code, err.getvalue()


@settings(max_examples=240, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_malformed_params_give_one_line_naming_the_key(base, tmp_path, monkeypatch, data):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    text, key = _mutate(base, data)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    stage = data.draw(st.sampled_from(STAGES), label="stage")
    argv = [stage, "--params", str(path)] + (["--method", "gmp"] if stage in PER_METHOD else [])
    code, err = _run(argv)
    assert code != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert key in err, (key, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


BAD_ARGS = [
    (["--bogus"], "arguments:"),
    (["--params", "missing.yaml"], "params: "),
    (["--method", "lottery"], "--method"),
    (["--params"], "arguments:"),
]


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stage=st.sampled_from([*STAGES, "train", "", "--help-me"]),
       bad=st.sampled_from(BAD_ARGS), shuffle=st.randoms())
def test_bad_argument_lists_give_one_line(base, tmp_path, monkeypatch, stage, bad, shuffle):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    Path("params.yaml").write_text(yaml.safe_dump(base))
    extra, expected = bad
    argv = [stage, *extra]
    if stage in PER_METHOD and "--method" not in extra and shuffle.random() < 0.5:
        argv += ["--method", "gmp"]
    code, err = _run(argv)
    assert code != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    named = [expected] if stage in PER_METHOD or "--method" not in extra else []
    assert any(part in err for part in (*named, "arguments:")), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
