"""Validation splits that keep rare cell types."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger("scrobust_sc")


def stratified_validation_split(labels: np.ndarray, fraction: float = 0.1, *, seed: int = 0):
    """Split cell positions into training and validation, class by class.

    Every class with at least two cells puts ``max(1, round(fraction * n))`` cells (never
    all of them) into validation, so rare types are validated too. A class with a single
    cell stays in training and is reported.

    Parameters
    ----------
    labels
        Class of each cell to split.
    fraction
        Share of each class held out for validation.
    seed
        Random seed.

    Returns
    -------
    ``(train_positions, validation_positions)`` into ``labels``.

    Examples
    --------
    >>> train, val = stratified_validation_split(np.array([0, 0, 0, 0, 1, 1, 2]), 0.25)
    >>> sorted(np.array([0, 0, 0, 0, 1, 1, 2])[val].tolist())
    [0, 1]
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}.")
    rng = np.random.default_rng(seed)
    train, val, singletons = [], [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = 0 if fraction == 0 else min(max(1, round(fraction * members.size)), members.size - 1)
        if members.size == 1:
            singletons.append(cls)
        val.append(members[:n_val])
        train.append(members[n_val:])
    if singletons and fraction > 0:
        logger.info("%d cell type(s) with a single cell stay in training only: %s", len(singletons), singletons)
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
