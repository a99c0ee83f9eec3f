"""Seeded train/test splits shared by every method of a benchmark run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold

logger = logging.getLogger("scrobust_sc")


@dataclass(frozen=True)
class Split:
    """One train/test split.

    Attributes
    ----------
    name
        ``"fold 0"``, ``"novel B cell"``, ``"CEL-seq2 -> Drop-seq"``...
    fold
        Index of the split within its protocol.
    train, test
        Cell positions.
    held_out
        The cell type left out of training (protocol ``novel``), else ``None``.
    note
        What was done to make the split valid (e.g. types kept in training).
    """

    name: str
    fold: int
    train: np.ndarray
    test: np.ndarray
    held_out: str | None = None
    note: str = field(default="")


def cv_splits(labels, n_folds: int = 5, *, seed: int = 0) -> list[Split]:
    """Stratified k-fold splits; types with fewer cells than folds stay in every training fold.

    ``StratifiedKFold(n_folds, shuffle=True, random_state=seed)`` on the labels, as in
    ``shared/data/BASELINES.md``. Cells of a type too rare to stratify are assigned to the
    training side of every fold (and reported in :attr:`Split.note`), so every test fold
    only holds types the methods could learn.

    Examples
    --------
    >>> splits = cv_splits(["a"] * 10 + ["b"] * 10 + ["c"], n_folds=5)
    >>> len(splits), splits[0].note
    (5, "types with fewer than 5 cells kept in training: ['c']")
    """
    labels = np.asarray(labels, dtype=str)
    names, counts = np.unique(labels, return_counts=True)
    rare = names[counts < n_folds]
    rare_cells = np.flatnonzero(np.isin(labels, rare))
    common = np.flatnonzero(~np.isin(labels, rare))
    if np.unique(labels[common]).size < 2:
        raise ValueError(f"Cross-validation needs at least 2 cell types with {n_folds} or more cells each.")
    note = f"types with fewer than {n_folds} cells kept in training: {sorted(rare.tolist())}" if rare.size else ""
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(common, labels[common])
    return [
        Split(f"fold {k}", k, np.sort(np.concatenate([common[tr], rare_cells])), common[te], note=note)
        for k, (tr, te) in enumerate(folds)
    ]


def novel_splits(labels, *, n_folds: int = 5, seed: int = 0, min_cells: int = 10) -> list[Split]:
    """Leave-one-type-out splits: each type in turn is absent from training.

    The test set is the first cross-validation fold's test cells plus every cell of the
    held-out type; training is the rest of that fold's training cells without the type.
    Types with fewer than ``min_cells`` cells are not held out.

    Examples
    --------
    >>> splits = novel_splits(["a"] * 20 + ["b"] * 20 + ["c"] * 20)
    >>> [s.held_out for s in splits]
    ['a', 'b', 'c']
    """
    labels = np.asarray(labels, dtype=str)
    base = cv_splits(labels, n_folds, seed=seed)[0]
    names, counts = np.unique(labels, return_counts=True)
    out = []
    for k, name in enumerate(names[counts >= min_cells]):
        novel = np.flatnonzero(labels == name)
        train = base.train[labels[base.train] != name]
        test = np.union1d(base.test, novel)
        if np.unique(labels[train]).size < 2:
            continue
        out.append(Split(f"novel {name}", k, train, test, held_out=str(name), note=base.note))
    return out


def cross_splits(groups, labels) -> list[Split]:
    """Train on one group (batch, platform...), test on all the others, for every group.

    Test cells of types absent from the training group are dropped (and reported); a group
    that leaves no test cell is skipped (logged), and none left is an error.

    Examples
    --------
    >>> splits = cross_splits(["x", "x", "y", "y"], ["a", "b", "a", "b"])
    >>> [s.name for s in splits]
    ['x -> rest', 'y -> rest']
    """
    groups = np.asarray(groups, dtype=str)
    labels = np.asarray(labels, dtype=str)
    values = np.unique(groups)
    if values.size < 2:
        raise ValueError(f"The split key has a single value ({values[0]!r}): nothing to cross to.")
    out = []
    for k, value in enumerate(values):
        train = np.flatnonzero(groups == value)
        test = np.flatnonzero(groups != value)
        known = np.isin(labels[test], np.unique(labels[train]))
        dropped = sorted(str(t) for t in set(labels[test][~known]))
        note = f"test types absent from {str(value)!r}, dropped: {dropped}" if dropped else ""
        if not known.any():
            logger.warning("Split %r -> rest skipped: no test cell of a type seen in %r.", str(value), str(value))
            continue
        out.append(Split(f"{value} -> rest", k, train, test[known], note=note))
    if not out:
        raise ValueError(
            "The split key leaves no test cell of a type seen in training, whichever group trains: the groups "
            "share no cell type, so there is nothing to score."
        )
    return out
