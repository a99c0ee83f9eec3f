"""Learning-rate schedule: linear warm-up, then cosine decay, per optimiser step."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, final_fraction: float = 0.05) -> float:
    """Learning-rate multiplier at ``step``.

    Examples
    --------
    >>> warmup_cosine(0, total_steps=100, warmup_steps=10)
    0.1
    >>> warmup_cosine(100, total_steps=100, warmup_steps=10)
    0.05
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
