"""Data-parallel scaling on this machine: the epoch time of `train.fit` in 1 and in 2 processes
(DistributedDataParallel over gloo, one thread each) and their ratio, and the bytes DDP
all-reduces per optimizer step against the model's parameter bytes.

    python benchmarks/ddp_scaling.py [--rounds 3] [--samples 20000] [--model mlp]

LeNet-300-100 (``--model``: any of `sparsebench.core.models`, on MNIST-shaped random tensors), SGD,
batch 128, one epoch per round; the epoch's own seconds (``seconds`` of the curve: training
steps, without validation), the median over rounds, the slowest rank for 2 processes.

Communication is counted where DDP sends it: a communication hook
(`DistributedDataParallel.register_comm_hook`) adds up the bytes of every gradient bucket it
all-reduces, then all-reduces it as DDP's default hook does. The payload per step is every
trained parameter's gradient once (DDP's buckets, 25 MB by default, partition the gradients);
a ring all-reduce over W ranks sends 2 (W - 1) / W times the payload from each rank (Patarasuk
and Yuan, "Bandwidth optimal all-reduce algorithms", JPDC 2009).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparsebench.core import distributed
from sparsebench.core.models import build_model
from sparsebench.core.schema import OptimizerParams
from sparsebench.core.train import Phase, fit

BATCH = 128
OPTIM = OptimizerParams(lr=0.05, momentum=0.9, schedule="constant")


def data(samples: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    return (x, y), (x[:1000], y[:1000])


def epoch_seconds(model_name: str, samples: int, counted: list[int] | None = None) -> float:
    torch.manual_seed(0)
    model = build_model(model_name)
    train, val = data(samples)
    curves = fit(model, train, val, Phase(1, BATCH, OPTIM), generator=torch.Generator()
                 .manual_seed(0), device=torch.device("cpu"), progress=False)
    return curves[-1]["seconds"]


def counting_hook(counted: list[int]):
    """DDP's default all-reduce (sum, then divide by the world), counting the bucket bytes."""
    def hook(state, bucket):
        buffer = bucket.buffer()
        counted.append(buffer.numel() * buffer.element_size())
        buffer.div_(dist.get_world_size())
        work = dist.all_reduce(buffer, async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0])
    return hook


def rank_main(rank: int, port: int, model_name: str, samples: int, rounds: int,
              out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.setup(torch.device("cpu"))
    counted: list[int] = []
    wrap = distributed.wrap

    def wrap_counting(model):
        ddp = wrap(model)
        ddp.register_comm_hook(None, counting_hook(counted))
        return ddp

    distributed.wrap = wrap_counting  # fit's own wrapper, with the counting hook
    seconds = []
    for _ in range(rounds):
        counted.clear()
        local = torch.tensor(epoch_seconds(model_name, samples))
        seconds.append(distributed.all_max(local).item())  # the slowest rank
    if rank == 0:
        steps = -(-samples // BATCH)
        with open(out, "w") as f:
            json.dump({"seconds": seconds, "bytes_per_step": sum(counted) / steps,
                       "buckets_per_step": len(counted) / steps}, f)
    distributed.teardown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--model", default="mlp")
    args = ap.parse_args()
    torch.set_num_threads(1)
    one = [epoch_seconds(args.model, args.samples) for _ in range(args.rounds)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = f"/tmp/ddp_scaling_{os.getpid()}.json"
    mp.start_processes(rank_main, args=(port, args.model, args.samples, args.rounds, out),
                       nprocs=2, start_method="spawn")
    with open(out) as f:
        two = json.load(f)
    os.unlink(out)
    model = build_model(args.model)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    t1, t2 = statistics.median(one), statistics.median(two["seconds"])
    print(f"model {args.model}, {args.samples} samples, batch {BATCH}, one thread per process, "
          f"{os.cpu_count()} cores, median of {args.rounds}")
    print(f"epoch 1 process:   {t1:.3f} s  ({', '.join(f'{s:.3f}' for s in one)})")
    print(f"epoch 2 processes: {t2:.3f} s  ({', '.join(f'{s:.3f}' for s in two['seconds'])})")
    print(f"speed-up 1 -> 2:   {t1 / t2:.2f}x (epoch time ratio 2/1 = {t2 / t1:.2f})")
    print(f"all-reduced per step: {two['bytes_per_step']:.0f} bytes in "
          f"{two['buckets_per_step']:.1f} buckets; parameters: {param_bytes} bytes "
          f"(ratio {two['bytes_per_step'] / param_bytes:.3f}); ring all-reduce sends "
          f"{two['bytes_per_step']:.0f} x 2(W-1)/W = {two['bytes_per_step']:.0f} bytes per "
          "rank per step at W = 2")


if __name__ == "__main__":
    main()
