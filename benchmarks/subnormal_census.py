"""Which tensors hold subnormal floats during a prune phase: a census at the end of every epoch.

Runs the prune phase of each named method of the default suite (params.yaml, tuned values laid
over it as the pipeline does) from the pretrained model, with subnormals kept (flush off), and
after every epoch (SAS-ADMM: every iteration) counts per tensor the entries with
0 < |x| < torch.finfo(float32).tiny: the weights (``weight`` / ``weight_orig``), their gradients,
the optimizer state (SGD's momentum_buffer, Adam's exp_avg and exp_avg_sq), ADMM's Z and U,
SAS-ADMM's W, Wb, Z and U. Each count is split into entries that are pruned (mask 0 for gmp,
Z = 0 for the ADMMs) and kept.

    python benchmarks/subnormal_census.py [--methods admm admm_l1 gmp sas_admm]
        [--pretrained PATH] [--flush] [--no-fix]

The evidence written to benchmarks/late_epochs.md comes from this script.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from late_epochs import pretrained_model, suite
from torch.optim.optimizer import register_optimizer_step_post_hook

from sparsebench.core.metrics import prunable_modules
from sparsebench.core.numerics import flush_subnormals
from sparsebench.core.train import seed_everything
from sparsebench.methods import admm as admm_module
from sparsebench.methods import build_method
from sparsebench.methods import sas_admm as sas_module
from sparsebench.methods.base import Context

TINY = torch.finfo(torch.float32).tiny


def subnormal(t: torch.Tensor) -> torch.Tensor:
    a = t.detach().abs()
    return (a > 0) & (a < TINY)


class Census:
    """Captures the optimizers and ADMM / SAS-ADMM states a prune phase creates."""

    def __init__(self) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self.admm: list[admm_module.ADMM] = []
        self.sas: list[sas_module.SASADMM] = []
        self.handle = register_optimizer_step_post_hook(self._seen)
        self._patch(admm_module.ADMM, self.admm)
        self._patch(sas_module.SASADMM, self.sas)

    def _seen(self, optimizer, args, kwargs) -> None:
        if not any(o is optimizer for o in self.optimizers):
            self.optimizers.append(optimizer)

    @staticmethod
    def _patch(cls, store: list) -> None:
        if getattr(cls, "_census_patched", False):
            store.clear()
            cls._census_store = store
            return
        original = cls.__init__

        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            cls._census_store.append(self)

        cls.__init__, cls._census_patched, cls._census_store = init, True, store

    def tensors(self, model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name -> (tensor, pruned-entry mask or None) of everything worth counting."""
        out = {}
        names = {id(p): n for n, p in model.named_parameters()}
        modules = dict(prunable_modules(model))
        pruned: dict[int, torch.Tensor] = {}
        for m in modules.values():
            if hasattr(m, "weight_mask"):
                pruned[id(m.weight_orig)] = m.weight_mask == 0
        for a in self.admm:
            for n, w in a.weights.items():
                pruned.setdefault(id(w), a.Z[n] == 0)
                out[f"{n}.Z"] = (a.Z[n], a.Z[n] == 0)
                out[f"{n}.U"] = (a.U[n], a.Z[n] == 0)
        for s in self.sas:
            for i, p in enumerate(s.params):
                where = s.Z[i] == 0 if i < len(s.coupled) else None
                label = names.get(id(p), str(i))
                for key in ("W", "Wb"):
                    out[f"{label}.{key}"] = (getattr(s, key)[i], where)
                if i < len(s.coupled):
                    out[f"{label}.Z"] = (s.Z[i], where)
                    out[f"{label}.U"] = (s.U[i], where)
        for n, p in model.named_parameters():
            out[n] = (p, pruned.get(id(p)))
            if p.grad is not None:
                out[f"{n}.grad"] = (p.grad, pruned.get(id(p)))
            for o in self.optimizers:
                for key, value in o.state.get(p, {}).items():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        out[f"{n}.{key}"] = (value, pruned.get(id(p)))
        for name, m in modules.items():
            if hasattr(m, "weight_mask"):
                out[f"{name}.weight (masked)"] = (m.weight, m.weight_mask == 0)
        return out

    def count(self, model: torch.nn.Module) -> dict[str, tuple[int, int]]:
        """name -> (subnormal entries among pruned ones, among kept ones); nonzero only."""
        counts = {}
        for name, (t, where) in self.tensors(model).items():
            sub = subnormal(t)
            total = int(sub.sum())
            if not total:
                continue
            in_pruned = int((sub & where).sum()) if where is not None else 0
            counts[name] = (in_pruned, total - in_pruned)
        return counts


def listing(counts: dict[str, tuple[int, int]]) -> str:
    """``name pruned+kept`` per tensor, or "none"."""
    return ", ".join(f"{n} {p}+{k}" for n, (p, k) in counts.items()) or "none"


def printer(key: str, census: Census, model: torch.nn.Module) -> Callable[[dict], None]:
    """The on_epoch hook of ``key``'s prune phase: the epoch's seconds and its census."""
    last = [time.perf_counter()]

    def show(row: dict) -> None:
        now = time.perf_counter()
        seconds, last[0] = now - last[0], now
        print(f"{key} epoch {row['epoch']} ({seconds:.1f} s): {listing(census.count(model))}",
              flush=True)

    return show


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["admm", "admm_l1", "gmp", "sas_admm"])
    parser.add_argument("--pretrained", help="a dense model file (default: train it, seed 0)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--flush", action="store_true", help="flush subnormals (the guard)")
    parser.add_argument("--no-fix", action="store_true",
                        help="leave the optimizer state of masked entries as it decays")
    args = parser.parse_args()
    flush_subnormals(args.flush)
    params, methods, data = suite(args.params)
    if args.no_fix:
        from late_epochs import without_fix
        without_fix()
    pretrained = pretrained_model(params, data, args.pretrained)
    for key in args.methods:
        census = Census()
        method = build_method(key, methods[key])
        model = pretrained()
        ctx = Context(train=data["train"], val=data["val"], device=torch.device("cpu"),
                      generator=seed_everything(0), seed=0, on_epoch=printer(key, census, model))
        method.prune(model, ctx)
        census.handle.remove()
        print(f"{key} after the final masks: {listing(census.count(model))}", flush=True)


if __name__ == "__main__":
    main()
