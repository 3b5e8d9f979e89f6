"""Data-parallel training (issue 17): two gloo ranks on the CPU train the model one process
trains, with the state that must agree identical on both ranks (`sparsebench.core.distributed`).

The cases (tests/ddp_cases.py): pretrain and one method per family (gmp, admm, sas_admm, grda,
linbreg) on 299 samples in batches of 32 (the last batch split 6 + 5), two epochs or two
iterations. Figures: ``pytest -s`` prints the largest relative difference per case.
"""

from __future__ import annotations

import socket
import time

import ddp_cases
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from sparsebench.core import distributed
from sparsebench.util.errors import UsageError

TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over tensors of max |a - b| / max |b|."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max()
                / b[k].double().abs().max().clamp_min(1e-30)).item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process models and the 2-rank models of every case."""
    from sparsebench.core.sparsity import get_masks
    from sparsebench.run import save_run_model

    out = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = {}
        model, curves = ddp_cases.pretrain()
        single["pretrain"] = (model.state_dict(), {})
        save_run_model(out / "pretrained", model, curves)  # both start every prune from it
        for key in ddp_cases.METHODS:
            model, _ = ddp_cases.prune(key, out / "pretrained")
            single[key] = ({k: v.clone() for k, v in model.state_dict().items()},
                           get_masks(model))
    finally:
        torch.set_num_threads(threads)
    spawn(out, ddp_cases.CASES)
    ddp = {case: torch.load(out / f"ddp_{case}.pt") for case in ddp_cases.CASES}
    return single, ddp


@pytest.mark.parametrize("case", ddp_cases.CASES)
def test_two_ranks_train_the_single_process_model(runs, case):
    single, ddp = runs
    weights, masks = single[case]
    got = ddp[case]
    assert got["masks"].keys() == masks.keys()
    for name, mask in masks.items():
        assert torch.equal(got["masks"][name], mask), f"{case}: mask {name} differs"
    diff = relative(got["state_dict"], weights)
    print(f"\n{case}: max relative difference 2 ranks vs 1 process {diff:.3g}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("case", ddp_cases.CASES)
def test_the_state_that_must_agree_is_identical_on_both_ranks(runs, case):
    spread = runs[1][case]["spread"]
    expected = {"admm": "admm.Z.", "sas_admm": "sas.sums.", "grda": "optimizer.",
                "linbreg": "optimizer.", "gmp": "mask."}
    if case in expected:  # the method's own state was gathered, not only the weights
        assert any(k.startswith(expected[case]) for k in spread), sorted(spread)
    differing = {k: v for k, v in spread.items() if v != 0.0}
    assert not differing, f"{case}: ranks differ in {differing}"


def spawn(out, cases, die_after=None, work=None, join=True):
    return mp.start_processes(ddp_cases.rank_main,
                              args=(2, free_port(), str(out), cases, die_after, work),
                              nprocs=2, start_method="spawn", join=join)


def test_a_rank_that_dies_stops_the_others_and_the_run_resumes(tmp_path, monkeypatch):
    """Rank 1 exits after epoch 1 of 2; rank 0 stops at its next collective, well within the
    short timeout, with one line naming rank 1, and writes nothing but that line and its
    epoch-1 checkpoint. Started again, both ranks resume from it and end with the weights of
    a 2-rank run never stopped, bit for bit."""
    monkeypatch.setenv("SPARSEBENCH_DDP_TIMEOUT", "20")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    for out in (killed, whole):
        (out / "work").mkdir(parents=True)
    started = time.perf_counter()
    context = spawn(killed, ("pretrain",), die_after=1, work=str(killed / "work"), join=False)
    first, second = context.processes
    second.join(timeout=60)
    first.join(timeout=30)
    assert (second.exitcode, first.exitcode) == (7, 1)
    assert time.perf_counter() - started < 30
    line = (killed / "rank0.err").read_text()
    assert len(line.splitlines()) == 1
    assert line.startswith("torchrun: rank 1 stopped; rank 0 stops too"), line
    assert sorted(str(p.relative_to(killed)) for p in killed.rglob("*")) == [
        "rank0.err", "work", "work/pretrain.resume.pt"]  # nothing half-written
    saved = torch.load(killed / "work/pretrain.resume.pt", weights_only=True)
    assert saved["epoch"] == 1
    spawn(killed, ("pretrain",), work=str(killed / "work"))  # started again: resumes
    spawn(whole, ("pretrain",), work=str(whole / "work"))  # never stopped
    resumed, never = (torch.load(out / "ddp_pretrain.pt")["state_dict"] for out in (killed, whole))
    assert all(torch.equal(resumed[k], never[k]) for k in never)


def test_the_global_batch_is_split_in_contiguous_near_equal_shares():
    assert distributed.shares(11, 2) == [6, 5]
    assert distributed.shares(32, 3) == [11, 11, 10]
    assert sum(distributed.shares(7, 4)) == 7


def test_one_process_changes_nothing():
    """No torchrun environment: not active, shard and wrap are the identity."""
    x, y = torch.randn(5, 3), torch.arange(5)
    model = torch.nn.Linear(3, 2)
    assert not distributed.active() and distributed.world() == 1 and distributed.writer()
    assert distributed.shard(x, y)[0] is x and distributed.wrap(model) is model
    distributed.check_shards(1, 128, "pretrain")  # one process: any batch


def test_more_ranks_than_the_smallest_batch_are_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: 4)
    with pytest.raises(UsageError, match=r"^nproc_per_node: 4 processes exceed the data shards "
                                         r"of pretrain: its smallest batch has 3 samples"):
        distributed.check_shards(131, 128, "pretrain")
    distributed.check_shards(132, 128, "pretrain")  # 4 samples: one each


def test_a_rank_late_at_the_end_of_pretrain_finds_its_work_directory(workspace):
    """Under torchrun rank 0 swaps the stage's work directory in as it leaves it; another rank
    must not list it then. Every rank once listed it for its run states, and on a loaded
    machine the listing failed (FileNotFoundError, 2 torchrun runs in 35): here rank 1's
    listing of it is made 3 s slower, which opens that window every time."""
    from conftest import small_params

    from sparsebench.pipeline.cli import main

    path = small_params(workspace, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["data"]["limit"] = 299
    raw["pretrain"]["epochs"] = 1
    path.write_text(yaml.safe_dump(raw))
    assert main(["prepare"]) == 0
    context = mp.start_processes(ddp_cases.stage_rank, args=(2, free_port(), str(workspace), 3.0),
                                 nprocs=2, start_method="spawn", join=False)
    for process in context.processes:
        process.join(timeout=240)
    assert [p.exitcode for p in context.processes] == [0, 0]
    assert sorted(p.name for p in (workspace / "runs" / "pretrain").iterdir()) == [
        "FINGERPRINT", "seed0", "seed1"]


def test_torchrun_pretrain_trains_the_single_process_models(workspace):
    """``torchrun --standalone --nproc_per_node 2 -m sparsebench pretrain`` (the CLI, two gloo
    ranks): the same models as ``sparsebench pretrain`` to 1e-5, rank 0's lines alone on
    stdout, and every run's figures recorded with the world size."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml
    from conftest import small_params

    from sparsebench.checkpoint import load_model

    path = small_params(workspace, tracking={"enabled": False})
    raw = yaml.safe_load(path.read_text())
    raw["data"]["limit"] = 299  # the last batch of 32 is 11: shares of 6 and 5
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cli = [sys.executable, "-m", "sparsebench"]
    for stage in ("prepare", "pretrain"):
        subprocess.run([*cli, stage], check=True, env=env, cwd=workspace, capture_output=True)
    single = {s: load_model(workspace / f"runs/pretrain/seed{s}/model.safetensors",
                            torch.device("cpu"))[0] for s in raw["seeds"]}
    shutil.rmtree(workspace / "runs/pretrain")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "sparsebench", "pretrain"]
    done = subprocess.run(torchrun, env=env, cwd=workspace, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]  # the ranks' tracebacks come first
    lines = [line for line in done.stdout.splitlines() if line.startswith("pretrain seed")]
    assert len(lines) == len(raw["seeds"]) * raw["pretrain"]["epochs"]  # rank 0's alone
    for seed, model in single.items():
        ddp, _ = load_model(workspace / f"runs/pretrain/seed{seed}/model.safetensors",
                            torch.device("cpu"))
        diff = relative(ddp.state_dict(), model.state_dict())
        print(f"\ntorchrun pretrain seed {seed}: max relative difference {diff:.3g}")
        assert diff <= TOLERANCE
    assert not list((workspace / "runs").glob(".*work"))  # nothing left behind
