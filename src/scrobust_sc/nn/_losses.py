"""Losses: NT-Xent (SimCLR) with negatives from every process, masked MSE."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_across_processes(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every data-parallel process along the first axis, keeping gradients.

    The gradient of each process's rows is summed over the processes (a reduce-scatter).
    Uses torch's functional collectives; ``torch.distributed.nn.functional.all_gather``,
    which torch deprecates, also left gloo workers aborting at exit now and then.
    Returns ``t`` unchanged outside distributed training.

    Examples
    --------
    >>> import torch
    >>> gather_across_processes(torch.ones(2, 3)).shape  # one process: nothing to gather
    torch.Size([2, 3])
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed import _functional_collectives as collectives

    gather = getattr(collectives, "all_gather_single", None)  # with autograd in the torch this is tested on
    if gather is None:  # older torch
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(t), dim=0)
    return gather(t.contiguous(), 0, dist.group.WORLD)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SimCLR NT-Xent loss of two views of the same ``N`` cells.

    Each of the ``2N`` views has the other view of its cell as the positive and the
    ``2N - 2`` other views as negatives (cosine similarity / temperature, cross-entropy).
    Under data parallelism the views of all processes are gathered first, so the loss
    does not depend on the number of processes.

    Parameters
    ----------
    z1, z2
        ``(N, d)`` projections of view 1 and view 2 (not yet normalised).
    temperature
        Softmax temperature.

    Examples
    --------
    >>> import torch
    >>> z = torch.eye(4)
    >>> float(nt_xent_loss(z, z, 0.07)) < 0.01
    True
    """
    z1 = gather_across_processes(z1)
    z2 = gather_across_processes(z2)
    n = z1.shape[0]
    if n < 2:
        raise ValueError("The contrastive loss needs at least 2 cells per mini-batch.")
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the valid positions only.

    Examples
    --------
    >>> import torch
    >>> float(masked_mse(torch.tensor([[1.0, 9.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[True, False]])))
    1.0
    """
    w = valid.to(pred.dtype)
    return ((pred - target) ** 2 * w).sum() / w.sum().clamp_min(1.0)
