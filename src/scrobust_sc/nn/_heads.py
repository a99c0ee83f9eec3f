"""Small fully connected heads on the CLS output."""

from __future__ import annotations

from torch import nn


def mlp_head(d_in: int, d_out: int, *, hidden: int | None = None, dropout: float = 0.1) -> nn.Sequential:
    """Two-layer head ``Linear - ELU - Dropout - Linear`` (the published form).

    Examples
    --------
    >>> import torch
    >>> mlp_head(8, 3)(torch.zeros(2, 8)).shape
    torch.Size([2, 3])
    """
    hidden = hidden or d_in
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))
