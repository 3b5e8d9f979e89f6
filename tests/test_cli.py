"""The command line itself: a misspelt ``--method`` is refused with the closest key before any
stage work, and every ``--help`` is plain text (no reStructuredText from the docstrings)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from sparsebench.pipeline.cli import DESCRIPTION, STAGES, main

DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())
KEYS = ", ".join(DEFAULT["methods"])  # the allowed keys, in params.yaml's order


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    """An empty folder with a copy of the real params.yaml, as the working directory and root."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(DEFAULT, sort_keys=False))
    return tmp_path


def _refused(capsys, argv: list[str]) -> str:
    """The one line of stderr of a refused command (exit code 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("stage", ["run", "calibrate", "tune"])
def test_a_misspelt_method_names_the_closest_key_and_writes_nothing(workspace, capsys, stage):
    err = _refused(capsys, [stage, "--params", "params.yaml", "--method", "admn"])
    assert err == ("sparsebench: error: --method: unknown method key 'admn'; did you mean admm? "
                   f"allowed: {KEYS}")
    assert [p.name for p in workspace.iterdir()] == ["params.yaml"]


@pytest.mark.parametrize("stage", ["run", "calibrate", "tune"])
def test_a_method_like_no_key_gets_no_hint(workspace, capsys, stage):
    err = _refused(capsys, [stage, "--params", "params.yaml", "--method", "lottery"])
    assert err == f"sparsebench: error: --method: unknown method key 'lottery'; allowed: {KEYS}"
    assert [p.name for p in workspace.iterdir()] == ["params.yaml"]


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal's width


def test_the_top_level_help_is_plain_text(capsys):
    out = _help(capsys, [])
    assert DESCRIPTION in out and "`" not in out, out
    assert all(stage in out for stage in STAGES)


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_help_is_plain_text(capsys, stage):
    out = _help(capsys, [stage])
    assert out.startswith(f"usage: sparsebench {stage}")
    assert STAGES[stage] in out and "`" not in out, out
