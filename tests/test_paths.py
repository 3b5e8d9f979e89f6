import os
from pathlib import Path

import pytest

from sparsebench.util.paths import atomic_dir, atomic_write, atomic_write_many, repo_root


def test_repo_root_is_the_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARSEBENCH_ROOT", raising=False)
    assert repo_root(tmp_path) == tmp_path.resolve()


def test_repo_root_leaves_a_dvc_queue_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARSEBENCH_ROOT", raising=False)
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12" / "sub"
    copy.mkdir(parents=True)
    assert repo_root(copy) == tmp_path.resolve()


def test_repo_root_of_a_suite_under_pipelines_is_the_dvc_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARSEBENCH_ROOT", raising=False)
    (tmp_path / ".dvc").mkdir()
    suite = tmp_path / "pipelines" / "lenet5-mnist"
    (suite / ".dvc").mkdir(parents=True)  # a DVC project of its own (dvc init --subdir)
    assert repo_root(suite) == tmp_path.resolve()
    queued = suite / ".dvc" / "tmp" / "exps" / "tmpab12"  # dvc exp run --queue in the suite
    queued.mkdir(parents=True)
    assert repo_root(queued) == tmp_path.resolve()


def test_repo_root_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBENCH_ROOT", str(tmp_path / "x"))
    assert repo_root(Path("/elsewhere")) == (tmp_path / "x").resolve()


def test_atomic_dir_replaces_the_old_output_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # untouched while the stage runs
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_keeps_the_old_output_on_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("stage failed")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_write_leaves_no_temporary(tmp_path):
    atomic_write(tmp_path / "a" / "b.json", "{}")
    atomic_write(tmp_path / "a" / "c.bin", b"\x00")
    assert (tmp_path / "a" / "b.json").read_text() == "{}"
    assert (tmp_path / "a" / "c.bin").read_bytes() == b"\x00"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.json", "c.bin"]


def test_atomic_write_many_changes_nothing_when_one_file_cannot_be_written(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    (tmp_path / "f").write_text("a file, not a directory")
    with pytest.raises(OSError):
        atomic_write_many({tmp_path / "a.txt": "new", tmp_path / "f" / "b.txt": "new"})
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "f"]


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_replaces_whole_or_keeps_the_old_file(tmp_path, durable, monkeypatch):
    target = tmp_path / "state.pt"
    atomic_write(target, b"old", durable=durable)
    atomic_write(target, b"new", durable=durable)
    assert target.read_bytes() == b"new"
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    atomic_write(target, b"newer", durable=durable)
    assert bool(synced) == durable  # the flush to disk is what durable=False leaves out
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("no")))
    with pytest.raises(OSError):
        atomic_write(target, b"lost", durable=durable)
    assert target.read_bytes() == b"newer"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
