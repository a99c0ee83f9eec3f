"""How often a 2-process gloo run of the contrastive loss aborts at exit, by gather.

Each run spawns two CPU processes that compute the NT-Xent loss on their half of a batch
(gathering the other process's views), back-propagate, all-reduce the gradient and destroy
the process group, as a data-parallel step does. A run fails when a process dies (the
abort seen: SIGABRT, "terminate called without an active exception").

    .venv/bin/python benchmarks/ddp_teardown.py --runs 40 --gather deprecated
    .venv/bin/python benchmarks/ddp_teardown.py --runs 40 --gather functional --free-loss
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deprecated_gather(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t), dim=0)


def _step(rank: int, world: int, port: int, gather: str, free_loss: bool) -> None:
    import scrobust_sc.nn._losses as losses

    warnings.simplefilter("ignore", FutureWarning)
    if gather == "deprecated":
        losses.gather_across_processes = _deprecated_gather
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rng = np.random.default_rng(0)
        x1, x2, w = rng.normal(size=(8, 6)), rng.normal(size=(8, 6)), rng.normal(size=(6, 4))
        w = torch.tensor(w, requires_grad=True)
        local = slice(rank * 4, rank * 4 + 4)
        loss = losses.nt_xent_loss(torch.tensor(x1[local]) @ w, torch.tensor(x2[local]) @ w, 0.07)
        loss.backward()
        grad = w.grad.detach().clone()
        if free_loss:
            del loss, w
        dist.all_reduce(grad)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--gather", choices=["functional", "deprecated"], default="functional")
    parser.add_argument("--free-loss", action="store_true", help="free the loss before destroying the group")
    parser.add_argument("--out", default=None, help="JSON file for the result")
    args = parser.parse_args()
    failed, start = [], time.time()
    for run in range(args.runs):
        try:
            mp.spawn(_step, args=(2, _free_port(), args.gather, args.free_loss), nprocs=2, join=True)
        except mp.ProcessExitedException as error:
            failed.append(run)
            print(f"run {run}: {error}", flush=True)
    result = {
        "gather": args.gather,
        "free_loss": args.free_loss,
        "runs": args.runs,
        "failed": len(failed),
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
