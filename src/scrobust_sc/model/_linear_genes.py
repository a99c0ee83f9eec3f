"""Which genes the classifier's linear path reads: every gene, or the highly variable ones.

Measured on the shared references (``docs/design.md``, "Genes of the linear path"): a
linear model on every gene wins on close PBMC types (Zheng), one on the 2,000 most
variable genes wins on references with types of a few cells (baron_mouse1). Which is
better is a property of the reference, so ``gene_linear_hvgs="auto"`` asks it: two
logistic regressions on held-out training cells, seconds against minutes of fine-tuning.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from scrobust_sc.data._splits import stratified_validation_split

logger = logging.getLogger("scrobust_sc")

#: Highly variable genes the linear path reads when ``"auto"`` chooses them.
AUTO_LINEAR_HVGS = 2000
#: Cells the choice reads at most (a random subset of larger references).
MAX_CHOICE_CELLS = 20_000
#: Fewest validated cells for a choice; below it every gene is kept.
MIN_CHOICE_CELLS = 20
#: Validation macro-F1 the HVGs must gain over every gene to be chosen (smaller is noise:
#: on pancreas_endocrinogenesis_bastidas, 2,000 genes in all, the two differ by <= 0.003).
CHOICE_MARGIN = 0.01


def choice_rows(rows: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """At most :data:`MAX_CHOICE_CELLS` of ``rows``, drawn with ``seed``, in increasing order.

    Examples
    --------
    >>> import numpy as np
    >>> choice_rows(np.arange(5)).tolist()
    [0, 1, 2, 3, 4]
    >>> choice_rows(np.arange(100_000)).size == MAX_CHOICE_CELLS
    True
    """
    if rows.size <= MAX_CHOICE_CELLS:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, MAX_CHOICE_CELLS, replace=False))


def choose_linear_genes(x, labels: np.ndarray, hvg_mask: np.ndarray, *, seed: int = 0) -> tuple[bool, dict]:
    """Whether the linear path should read only the highly variable genes.

    Splits the labelled cells (types of 5 or more cells give 20% to validation), fits a
    logistic regression on every gene and one on the ``hvg_mask`` genes, and compares their
    validation macro-F1. The HVGs are chosen when they gain more than :data:`CHOICE_MARGIN`;
    otherwise, and on references too small to tell, every gene is kept.

    Parameters
    ----------
    x
        ``(cells, genes)`` log-normalised values of labelled cells.
    labels
        Cell type of each row.
    hvg_mask
        Genes of the candidate subset.
    seed
        Seed of the split and of the cell subset (at most :data:`MAX_CHOICE_CELLS`).

    Returns
    -------
    ``(use_hvgs, scores)``: the choice and ``{"all_genes": f1, "hvgs": f1, "n_validation": n}``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(["a", "b"], 50)
    >>> x = rng.poisson(1.0, (100, 30)).astype(float)
    >>> x[labels == "a", 0] += 3  # only gene 0 tells the types apart
    >>> use, scores = choose_linear_genes(x, labels, np.arange(30) < 3)
    >>> use, scores["hvgs"] >= scores["all_genes"]
    (True, True)
    """
    labels = np.asarray(labels).astype(str)
    rows = choice_rows(np.arange(labels.size), seed=seed)
    x, labels = sparse.csr_matrix(x)[rows], labels[rows]
    train, validation = stratified_validation_split(labels, fraction=0.2, seed=seed)
    scores: dict = {"n_validation": int(validation.size)}
    if validation.size < MIN_CHOICE_CELLS or np.unique(labels[train]).size < 2 or not hvg_mask.any():
        return False, scores
    for name, columns in (("all_genes", slice(None)), ("hvgs", np.asarray(hvg_mask, dtype=bool))):
        features = x[:, columns]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(max_iter=200, random_state=seed).fit(features[train], labels[train])
        predicted = model.predict(features[validation])
        scores[name] = float(f1_score(labels[validation], predicted, average="macro", zero_division=0))
    return scores["hvgs"] > scores["all_genes"] + CHOICE_MARGIN, scores
