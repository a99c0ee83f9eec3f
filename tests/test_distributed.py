"""NT-Xent under data parallelism: 2 CPU processes (gloo) equal one process on the global batch."""

import os
import socket
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scrobust_sc.nn import nt_xent_loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_and_grad(x1: np.ndarray, x2: np.ndarray, weight: np.ndarray):
    """A shared projection (the parameters DDP synchronises) followed by NT-Xent."""
    w = torch.tensor(weight, requires_grad=True)
    loss = nt_xent_loss(torch.tensor(x1) @ w, torch.tensor(x2) @ w, 0.07)
    loss.backward()
    return loss.item(), w.grad


def _worker(rank: int, world: int, port: int, x1, x2, weight, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = len(x1) // world
        local = slice(rank * n, (rank + 1) * n)
        with warnings.catch_warnings():
            # torch.distributed.nn's all_gather is deprecated, and its gloo workers aborted at exit
            # (SIGABRT) about 1 run in 20: the loss must gather through the functional collectives
            warnings.simplefilter("error", FutureWarning)
            loss, grad = _loss_and_grad(x1[local], x2[local], weight)
        dist.all_reduce(grad)  # what DDP does with parameter gradients: average over processes
        grad /= world
        np.save(f"{out}/rank{rank}.npy", np.concatenate([[loss], grad.numpy().ravel()]))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    rng = np.random.default_rng(0)
    x1, x2, weight = rng.normal(size=(8, 6)), rng.normal(size=(8, 6)), rng.normal(size=(6, 4))
    mp.spawn(_worker, args=(2, _free_port(), x1, x2, weight, str(tmp_path)), nprocs=2, join=True)
    loss, grad = _loss_and_grad(x1, x2, weight)
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npy")
        np.testing.assert_allclose(got[0], loss, rtol=1e-10)
        np.testing.assert_allclose(got[1:].reshape(6, 4), grad.numpy(), rtol=1e-8, atol=1e-12)
    # without gathering, each process would only see its own 4 cells' negatives
    local_loss, _ = _loss_and_grad(x1[:4], x2[:4], weight)
    assert abs(local_loss - loss) > 1e-3
