"""The shrunk runs the distributed equality test trains (tests/test_distributed.py), and the
bit-identity check of the single-process path (``python tests/ddp_cases.py OUT``).

A few hundred samples, two epochs, a 16-12-4 MLP: pretrain (`train.fit`), then one prune
method per family through `run.run` (prune phase and one epoch of masked retrain). 299
training samples in batches of 32 make the last batch 11 samples, split 6 + 5 over two
ranks: the unequal-share case is exercised every epoch.

Only APIs that predate issue 17 are used here, so the same file trains with the code before
the change (``PYTHONPATH=<old>/src``) and after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import prototype_data

N_TRAIN, N_VAL, BATCH = 299, 64, 32

#: one method per family, shrunk to two epochs (or two ADMM / SAS-ADMM iterations)
METHODS = {
    "gmp": {"epochs": 2, "start_epoch": 0, "end_epoch": 1, "frequency": 2, "batch_size": BATCH,
            "target_sparsity": 0.8, "optimizer": {"lr": 0.05, "momentum": 0.9}},
    "admm": {"iterations": 2, "epochs_per_iteration": 1, "batch_size": BATCH,
             "target_sparsity": 0.8, "rho": 0.01, "rho_growth": 1.5},
    "sas_admm": {"iterations": 2, "M": 4, "k0": 1, "last": 1, "batch_size": BATCH,
                 "target_sparsity": 0.8, "beta": 0.5, "lam": 1e-3, "v": 5.0},
    "grda": {"epochs": 2, "batch_size": BATCH, "lr": 0.05, "c": 0.05},
    "linbreg": {"epochs": 2, "batch_size": BATCH, "lr": 0.05, "lam": 0.05},
}
CASES = ("pretrain", *METHODS)


def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The tests' prototype problem (`conftest.prototype_data`) at this module's sizes."""
    return prototype_data(N_TRAIN, N_VAL)


def model_spec():
    from sparsebench.run import ModelSpec

    return ModelSpec("mlp", {"widths": [12]}, in_channels=1, image_size=4, num_classes=4)


def pretrain(work: Path | None = None, on_epoch=None):
    """Dense training as the pretrain stage does it, resumable from ``work`` when given;
    returns (model, curves)."""
    from sparsebench.core.checkpoints import EpochCheckpoint, Resume
    from sparsebench.core.schema import OptimizerParams
    from sparsebench.core.train import Phase, fit, seed_everything

    generator = seed_everything(0)
    model = model_spec().build()
    phase = Phase(2, BATCH, OptimizerParams(lr=0.1, momentum=0.9, schedule="cosine"), "pretrain")
    resume = None if work is None else Resume(EpochCheckpoint(work / "pretrain.resume.pt"))
    d = data()
    curves = fit(model, d["train"], d["val"], phase, generator=generator,
                 device=torch.device("cpu"), progress=False, resume=resume, on_epoch=on_epoch)
    return model, curves


def prune(key: str, pretrained: Path):
    """One run of ``key`` from the model saved at ``pretrained``; returns (model, curves)."""
    from sparsebench.core.schema import OptimizerParams, PhaseParams
    from sparsebench.methods import method_params
    from sparsebench.run import RunSpec, run

    spec = RunSpec(key=key, method=method_params(key, dict(METHODS[key])), level=None, seed=0,
                   retrain=PhaseParams(epochs=1, batch_size=BATCH,
                                       optimizer=OptimizerParams(lr=0.01, momentum=0.9)),
                   model=model_spec(), pretrained=pretrained)
    outcome = run(spec, data(), torch.device("cpu"))
    return outcome.model, outcome.curves


def train_all(out: Path) -> None:
    """Train every case single-process and save each model's state_dict under ``out``."""
    from sparsebench.run import save_run_model

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    model, curves = pretrain()
    torch.save(model.state_dict(), out / "pretrain.pt")
    save_run_model(out / "pretrained", model, curves)
    for key in METHODS:
        model, _ = prune(key, out / "pretrained")
        torch.save(model.state_dict(), out / f"{key}.pt")


def method_state(captured: dict) -> dict[str, torch.Tensor]:
    """The state that must agree over the ranks, by name: ADMM's Z and U, SAS-ADMM's W, Wb,
    Z, U and ergodic sums, the optimizer's state (gRDA's accumulator and l1 threshold, the
    Bregman subgradients and momentum)."""
    out: dict[str, torch.Tensor] = {}
    if "admm" in captured:
        admm = captured["admm"]
        out.update({f"admm.Z.{n}": z for n, z in admm.Z.items()})
        out.update({f"admm.U.{n}": u for n, u in admm.U.items()})
    if "sas" in captured:
        sas = captured["sas"]
        for part in ("W", "Wb", "Z", "U", "sums"):
            out.update({f"sas.{part}.{i}": t for i, t in enumerate(getattr(sas, part) or [])})
    if "optimizer" in captured:
        for i, state in captured["optimizer"].state_dict()["state"].items():
            for k, v in state.items():
                out[f"optimizer.{i}.{k}"] = torch.as_tensor(v, dtype=torch.float64)
    return out


def capture() -> dict:
    """Keep a reference to each method's state object as the method uses it (no behaviour
    changes: the wrapped functions are called as they are)."""
    from sparsebench.methods import ADMM
    from sparsebench.methods.sas_admm import SASADMM
    from sparsebench.methods.sparse_training import SparseTraining

    captured: dict = {}
    masks, average = ADMM.masks, SASADMM.write_average

    def admm_masks(self, *args, **kwargs):
        captured["admm"] = self
        return masks(self, *args, **kwargs)

    def sas_average(self):
        captured["sas"] = self
        return average(self)

    for cls in SparseTraining.__subclasses__():
        def optimizer(self, model, _build=cls.optimizer):
            captured["optimizer"] = _build(self, model)
            return captured["optimizer"]
        cls.optimizer = optimizer
    ADMM.masks, SASADMM.write_average = admm_masks, sas_average
    return captured


def rank_main(rank: int, world: int, port: int, out: str, cases: tuple[str, ...],
              die_after: int | None = None, work: str | None = None) -> None:
    """One rank of the distributed run of ``cases`` (spawned by the test): the same training
    as `train_all` over ``world`` gloo ranks. Rank 0 saves each model's state_dict, its masks,
    and the largest difference between the ranks of the model, the masks and the method's
    state (`distributed.gather_equal`) under ``out``. ``die_after``: rank 1 exits after that
    many epochs of pretrain (the dying-rank test); ``work``: pretrain checkpoints there every
    epoch and resumes from it."""
    import os

    from sparsebench.core import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.setup(torch.device("cpu"))
    out_dir = Path(out)
    captured = capture()
    try:
        train_cases(cases, out_dir, captured, rank, die_after, Path(work) if work else None)
    except RuntimeError as exc:  # a collective that lost a rank: the CLI's one line
        (out_dir / f"rank{rank}.err").write_text(distributed.failure_line(exc))
        raise SystemExit(1) from None
    finally:
        distributed.teardown()


def train_cases(cases: tuple[str, ...], out_dir: Path, captured: dict, rank: int,
                die_after: int | None, work: Path | None) -> None:
    import os

    from sparsebench.core import distributed
    from sparsebench.core.sparsity import get_masks

    for case in cases:
        captured.clear()
        if case == "pretrain":
            def die(row: dict) -> None:
                if rank == 1 and die_after is not None and row["epoch"] >= die_after:
                    os._exit(7)
            model, _ = pretrain(work, on_epoch=die)
        else:
            model, _ = prune(case, out_dir / "pretrained")
        masks = {f"mask.{n}": m for n, m in get_masks(model).items()}
        state = {**{f"weight.{n}": v for n, v in model.state_dict().items()}, **masks,
                 **method_state(captured)}
        spread = distributed.gather_equal(state)
        if distributed.writer():
            torch.save({"state_dict": model.state_dict(), "masks": get_masks(model),
                        "spread": spread}, out_dir / f"ddp_{case}.pt")
        distributed.barrier()


def stage_rank(rank: int, world: int, port: int, root: str, late: float) -> None:
    """One rank of ``sparsebench pretrain`` (the CLI's stage) in the workspace ``root``. On
    rank 1, listing the stage's work directory (``runs/.pretrain.work``) takes ``late`` seconds
    longer, between finding it and reading it: the window that a loaded machine can open
    while rank 0 swaps that directory in. Exits with the CLI's code."""
    import os
    import time

    from sparsebench.pipeline.cli import main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), SPARSEBENCH_ROOT=root)
    os.chdir(root)
    if rank == 1:
        original = os.scandir

        def slow(path="."):
            if os.path.basename(os.fspath(path)) == ".pretrain.work":
                time.sleep(late)
            return original(path)

        os.scandir = slow
    raise SystemExit(main(["pretrain"]))


if __name__ == "__main__":
    train_all(Path(sys.argv[1]))
