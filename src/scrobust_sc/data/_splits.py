"""Validation splits that keep rare cell types."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger("scrobust_sc")


def stratified_validation_split(
    labels: np.ndarray,
    fraction: float = 0.1,
    *,
    seed: int = 0,
    min_cells: int = 5,
    class_names: Sequence[str] | None = None,
):
    """Split cell positions into training and validation, class by class.

    Every class with at least ``min_cells`` cells puts ``max(1, round(fraction * n))`` of
    them into validation, so rare types are validated too. Smaller classes stay in
    training whole (one of their few cells is worth more there) and are reported.

    Parameters
    ----------
    labels
        Class of each cell to split.
    fraction
        Share of each class held out for validation.
    seed
        Random seed.
    min_cells
        Smallest class that gives a cell to validation.
    class_names
        Names of integer classes, for the log of the classes kept in training.

    Returns
    -------
    ``(train_positions, validation_positions)`` into ``labels``.

    Examples
    --------
    >>> labels = np.array([0] * 6 + [1] * 5 + [2] * 2)
    >>> train, val = stratified_validation_split(labels, 0.1)
    >>> sorted(labels[val].tolist())
    [0, 1]
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}.")
    rng = np.random.default_rng(seed)
    train, val, small = [], [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = 0
        if fraction > 0 and members.size >= min_cells:
            n_val = min(max(1, round(fraction * members.size)), members.size - 1)
        elif fraction > 0:
            small.append(cls)
        val.append(members[:n_val])
        train.append(members[n_val:])
    if small:
        small = [str(class_names[int(c)]) if class_names is not None else str(c) for c in small]
        logger.info("%d cell type(s) with fewer than %d cells stay in training only: %s", len(small), min_cells, small)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def class_weights(labels: np.ndarray, n_classes: int, mode: str | None = "sqrt") -> np.ndarray:
    """Per-class loss weights, mean 1 over the training cells' classes.

    ``"balanced"``: ``n / (K n_c)``; ``"sqrt"``: its square root (milder); ``None``: ones.

    Examples
    --------
    >>> class_weights(np.array([0, 0, 0, 1]), 2, "balanced").round(3).tolist()
    [0.667, 2.0]
    """
    if mode is None:
        return np.ones(n_classes)
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    if mode == "sqrt":
        w = np.sqrt(w)
    elif mode != "balanced":
        raise ValueError(f"class_weight must be None, 'balanced' or 'sqrt', not {mode!r}.")
    w[~present] = 1.0
    return w / (w[labels].mean() if labels.size else 1.0)
