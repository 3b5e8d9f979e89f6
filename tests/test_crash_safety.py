"""Faults from outside: a full disk, a read-only output directory, a tracking server that is not
there or that fails in the middle of logging. Each gives one line, no partial file, and the
earlier outputs as they were. The disks are real: small tmpfs mounts (root is needed to mount;
without it these tests are skipped with the reason)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import small_params

from sparsebench.pipeline.cli import main


@contextmanager
def mounted(path: Path, options: str):
    """A tmpfs at ``path`` with mount ``options`` (e.g. ``size=64k`` or ``ro``)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_full_disk_gives_one_line_and_no_partial_file(workspace, capsys):
    path = small_params(workspace, tracking={"enabled": False})
    assert main(["prepare", "--params", str(path)]) == 0
    with mounted(workspace / "runs", "size=64k"):  # the models do not fit
        assert main(["pretrain", "--params", str(path)]) == 1
        err = _one_line(capsys)
        assert "No space left on device" in err and "output:" in err
        assert _files(workspace / "runs") == []


def test_full_disk_while_writing_the_report_keeps_the_previous_report(workspace, capsys):
    path = small_params(workspace, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["methods"] = {k: raw["methods"][k] for k in ("dense", "magnitude", "gmp")}
    raw["tune"]["spaces"] = {"gmp": raw["tune"]["spaces"]["gmp"]}
    path.write_text(yaml.safe_dump(raw))
    args = ["--params", str(path)]
    for stage in ("prepare", "pretrain"):
        assert main([stage, *args]) == 0
    for key in ("dense", "magnitude", "gmp"):
        assert main(["run", *args, "--method", key]) == 0
    assert main(["report", *args]) == 0
    before = {f: (workspace / "reports" / f).read_bytes() for f in _files(workspace / "reports")}
    capsys.readouterr()
    with mounted(workspace / "reports", "size=16k") as reports:  # room for the text, not PNGs
        (reports / "curves.md").write_text("the previous report")
        assert main(["report", *args]) == 1
        assert "No space left on device" in _one_line(capsys)
        assert _files(reports) == ["curves.md"]  # nothing half-written beside it
        assert (reports / "curves.md").read_text() == "the previous report"
    assert {f: (workspace / "reports" / f).read_bytes()
            for f in _files(workspace / "reports")} == before


def test_read_only_output_directory_gives_one_line(workspace, capsys):
    path = small_params(workspace, tracking={"enabled": False})
    assert main(["prepare", "--params", str(path)]) == 0
    with mounted(workspace / "runs", "ro"):
        assert main(["pretrain", "--params", str(path)]) == 1
        assert "Read-only file system" in _one_line(capsys)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_is_reported_before_training(workspace, capsys):
    uri = f"http://127.0.0.1:{_free_port()}"
    path = small_params(workspace, tracking={"enabled": True, "uri": uri})
    assert main(["prepare", "--params", str(path)]) == 0
    start = time.monotonic()
    assert main(["pretrain", "--params", str(path)]) == 2
    assert time.monotonic() - start < 10
    err = _one_line(capsys)
    assert f"tracking.uri: '{uri}' cannot be reached" in err
    assert "tracking.enabled: false" in err
    assert not (workspace / "runs").exists()  # nothing trained


def test_tracking_failure_mid_run_keeps_the_results_and_marks_the_run_failed(tracked_workspace,
                                                                            capsys):
    """The artifact store turns read-only while the runs train: each live run gets its metrics
    and is marked FAILED, training goes on, the stage exits 1 with one line; once the store is
    writable again, the rerun trains nothing and completes the same runs (no duplicates)."""
    workspace = tracked_workspace
    from mlflow import MlflowClient

    from sparsebench.tracking.runs import client_for, tracking_uri

    path = small_params(workspace, tracking={"enabled": True})
    args = ["--params", str(path)]
    for stage in ("prepare", "pretrain"):
        assert main([stage, *args]) == 0
    client, experiment = client_for(tracking_uri(), "sparsebench-default")
    capsys.readouterr()
    with mounted(workspace / "mlruns" / "artifacts", "ro"):
        assert main(["run", *args, "--method", "magnitude"]) == 1
    err = _one_line(capsys)
    assert "tracking: logging run magnitude c" in err and "FAILED" in err
    summary = json.loads((workspace / "evaluation" / "magnitude.json").read_text())
    assert summary["levels"]["c8"]["mean"]["sparsity"] == pytest.approx(0.875, abs=1e-3)
    assert len(summary["levels"]) == 5  # every run is on disk, none was stopped
    runs = MlflowClient(tracking_uri()).search_runs([experiment], "tags.run_kind = 'seed'")
    assert len(runs) == 10 and {r.info.status for r in runs} == {"FAILED"}
    on_disk = {(str(r["seed"]), str(r["level"])): r for r in summary["runs"]}
    for run in runs:  # the figures went in before the artifacts failed
        tags = run.data.tags
        assert run.data.metrics["test_accuracy"] == \
            on_disk[tags["seed"], tags["level"]]["figures"]["test_accuracy"]

    out = capsys.readouterr().out
    assert main(["run", *args, "--method", "magnitude"]) == 0
    out = capsys.readouterr().out
    assert "0 to train" in out and "10 runs completed from their records" in out
    again = MlflowClient(tracking_uri()).search_runs([experiment], "tags.run_kind = 'seed'")
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
    assert {r.info.status for r in again} == {"FINISHED"}
    for run in again:
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == \
            ["model/model.sparse.safetensors"]
        history = client.get_metric_history(run.info.run_id, "test_accuracy")
        assert len(history) == 1  # not logged a second time
