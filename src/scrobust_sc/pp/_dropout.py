"""Artificial dropout, as in the paper's robustness experiments."""

from __future__ import annotations

import anndata as ad
import numpy as np
from scipy import sparse


def dropout_counts(matrix, p: float, *, seed: int = 0) -> sparse.csr_matrix:
    """Set ``round(p * nnz)`` random non-zero entries of every cell to zero.

    Returns a CSR matrix whatever the input's format (dense float16 becomes float32).

    Examples
    --------
    >>> import numpy as np
    >>> dropout_counts(np.array([[1, 2, 3, 4]]), 0.5).nnz
    2
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout rate p must be in [0, 1), got {p}.")
    rng = np.random.default_rng(seed)
    if not sparse.issparse(matrix) and np.asarray(matrix).dtype == np.float16:  # scipy.sparse has no float16
        matrix = np.asarray(matrix, dtype=np.float32)
    out = sparse.csr_matrix(matrix, copy=True)
    out.eliminate_zeros()
    per_row = np.diff(out.indptr)
    rows = np.repeat(np.arange(out.shape[0]), per_row)
    order = np.lexsort((rng.random(out.nnz), rows))  # random order within each row
    rank = np.empty(out.nnz, dtype=np.int64)
    rank[order] = np.arange(out.nnz) - out.indptr[rows[order]]
    n_drop = np.rint(p * per_row).astype(np.int64)
    out.data[rank < n_drop[rows]] = 0
    out.eliminate_zeros()
    return out


def add_dropout(
    adata: ad.AnnData, p: float, *, layer: str | None = None, seed: int = 0, copy: bool = True
) -> ad.AnnData | None:
    """Additional dropout: in every cell, a random fraction ``p`` of its non-zero counts set to 0.

    Parameters
    ----------
    adata
        Cells with raw counts.
    p
        Fraction of each cell's non-zero entries to remove.
    layer
        Layer to corrupt (``None``: ``X``).
    seed
        Random seed.
    copy
        Return a corrupted copy (default) instead of changing ``adata``.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> noisy = scrobust.pp.add_dropout(scrobust.data.pbmc_demo(), 0.5)
    """
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"layer {layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}).")
    target = adata.copy() if copy else adata
    matrix = target.X if layer is None else target.layers[layer]
    corrupted = dropout_counts(matrix, p, seed=seed)
    if layer is None:
        target.X = corrupted
    else:
        target.layers[layer] = corrupted
    return target if copy else None
