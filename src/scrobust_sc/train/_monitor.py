"""A convergence signal of pre-training users can read: kNN accuracy of the labels from the embeddings."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

logger = logging.getLogger("scrobust_sc")

#: Name of the metric in ``model.history``.
KNN_METRIC = "knn_accuracy"
#: About how many labelled cells the monitor embeds at each evaluation (a seeded sample).
KNN_MAX_CELLS = 500
#: Most evaluations per pre-training run (every ``ceil(max_epochs / KNN_EVALUATIONS)`` epochs, and the last).
KNN_EVALUATIONS = 8
#: Fewest labelled cells of a type for it to count (5-fold CV needs one per fold).
KNN_MIN_CELLS_PER_TYPE = 5


def knn_accuracy(z: np.ndarray, labels: np.ndarray, k: int = 15, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a k-nearest-neighbour classifier of ``labels`` on ``z``.

    ``k`` shrinks to fit the smallest training fold. Stratified, shuffled folds drawn with ``seed``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(["a", "b"], 20)
    >>> z = rng.normal(size=(40, 3)) + (labels == "b")[:, None] * 5.0
    >>> knn_accuracy(z, labels)
    1.0
    """
    n_train = len(labels) - int(np.ceil(len(labels) / folds))
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(max(1, min(k, n_train))), z, labels, cv=splits)
    return float(scores.mean())


def knn_sample(labels: np.ndarray, max_cells: int = KNN_MAX_CELLS, seed: int = 0) -> np.ndarray:
    """Sorted indices of about ``max_cells`` cells of the types with at least 5 of them; empty if under 2 types.

    Each type keeps a share of its cells proportional to its size, and at least 5 (so
    many small types can take the sample a little over ``max_cells``).

    Examples
    --------
    >>> labels = np.array(["a"] * 50 + ["b"] * 10 + ["c"] * 2)
    >>> idx = knn_sample(labels, max_cells=30)
    >>> sorted(set(labels[idx].tolist())), len(idx)
    (['a', 'b'], 30)
    >>> knn_sample(np.array(["a"] * 9)).size
    0
    """
    types, counts = np.unique(labels, return_counts=True)
    kept = types[counts >= KNN_MIN_CELLS_PER_TYPE]
    if kept.size < 2:
        return np.zeros(0, dtype=int)
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(np.isin(labels, kept))
    share = min(1.0, max_cells / eligible.size)
    chosen = []
    for t in kept:
        cells = np.flatnonzero(labels == t)
        n = max(KNN_MIN_CELLS_PER_TYPE, int(round(share * cells.size)))
        chosen.append(rng.choice(cells, min(n, cells.size), replace=False))
    return np.sort(np.concatenate(chosen))


class KNNMonitor(Callback):
    """Logs :data:`KNN_METRIC` (:func:`knn_accuracy` of ``labels`` from ``embed()``) during pre-training.

    Evaluated about ``evaluations`` times over the run's epochs (every
    ``ceil(max_epochs / evaluations)`` epochs) and after the last one; :attr:`evaluated`
    records the epoch and optimiser step of each evaluation. The random state of the run is
    restored afterwards, so a run with the monitor makes the same random draws as one
    without (the same run, up to floating-point rounding). In a data-parallel run only the
    first process (rank 0) evaluates and logs it: every process holds the same weights.

    Parameters
    ----------
    embed
        Returns the embeddings of the monitored cells with the current weights.
    labels
        Their labels.
    evaluations
        About how many evaluations a run gets.

    Examples
    --------
    >>> monitor = KNNMonitor(lambda: np.eye(10), np.repeat(["a", "b"], 5), evaluations=4)
    >>> monitor.evaluations, monitor.evaluated
    (4, [])
    """

    def __init__(self, embed: Callable[[], np.ndarray], labels: np.ndarray, evaluations: int = KNN_EVALUATIONS):
        if evaluations < 1:
            raise ValueError(f"evaluations must be at least 1, not {evaluations!r}.")
        self.embed = embed
        self.labels = np.asarray(labels)
        self.evaluations = int(evaluations)
        #: ``(epoch, step)`` of each evaluation so far, 1-based epochs, in the order they ran
        self.evaluated: list[tuple[int, int]] = []

    def _due(self, trainer) -> bool:
        epoch = trainer.current_epoch + 1
        every = math.ceil(trainer.max_epochs / self.evaluations) if trainer.max_epochs and trainer.max_epochs > 0 else 1
        last_epoch = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        last_step = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
        return epoch % every == 0 or last_epoch or last_step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # every process of a data-parallel run holds the same weights: the first evaluates for all
        if getattr(trainer, "global_rank", 0) != 0 or not self._due(trainer):
            return
        rng_state = torch.get_rng_state()
        training = pl_module.training
        try:
            accuracy = knn_accuracy(self.embed(), self.labels)
        finally:
            torch.set_rng_state(rng_state)
            pl_module.train(training)
        self.evaluated.append((trainer.current_epoch + 1, trainer.global_step))
        pl_module.log(
            KNN_METRIC, accuracy, on_step=False, on_epoch=True, batch_size=len(self.labels), rank_zero_only=True
        )
        logger.info(
            "Pre-training epoch %d (step %d): kNN accuracy of the labels from the embeddings %.3f",
            trainer.current_epoch + 1,
            trainer.global_step,
            accuracy,
        )
