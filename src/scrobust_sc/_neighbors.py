"""A kNN graph for scanpy that works with every pynndescent release."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# scanpy computes exact (brute-force) neighbours below this many cells for euclidean distances
BRUTE_FORCE_LIMIT = 8192


def neighbors(adata, *, use_rep: str, n_neighbors: int = 15, random_state: int = 0) -> None:
    """``sc.pp.neighbors`` that also works on large data with pynndescent >= 0.7.

    From 8,192 cells on, scanpy 1.11 builds the graph with pynndescent. pynndescent 0.7
    returns a ``scipy.sparse.csr_array``, which scanpy 1.11 cannot read (``'csr_array' object
    has no attribute 'getnnz'``). Here the approximate graph is built with scanpy's own
    settings and handed back as a ``csr_matrix``. Below that size scanpy's default is used.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(obsm={"X_e": np.random.default_rng(0).normal(size=(50, 4))})
    >>> neighbors(adata, use_rep="X_e", n_neighbors=5)
    >>> adata.obsp["connectivities"].shape
    (50, 50)
    """
    import scanpy as sc

    transformer = None
    if adata.n_obs >= BRUTE_FORCE_LIMIT:
        transformer = _pynndescent_as_matrix(adata.n_obs, n_neighbors, random_state)
    sc.pp.neighbors(adata, use_rep=use_rep, n_neighbors=n_neighbors, random_state=random_state, transformer=transformer)


def _pynndescent_as_matrix(n_obs: int, n_neighbors: int, random_state: int):
    """A ``PyNNDescentTransformer`` with scanpy's settings whose graph is a ``csr_matrix``."""
    from pynndescent import PyNNDescentTransformer

    class _CsrMatrixTransformer(PyNNDescentTransformer):
        def fit_transform(self, X, y=None, **fit_params):
            return sp.csr_matrix(super().fit_transform(X, y, **fit_params))

    return _CsrMatrixTransformer(
        n_neighbors=n_neighbors,
        metric="euclidean",
        n_trees=min(64, 5 + int(round(n_obs**0.5 / 20.0))),
        n_iters=max(5, int(round(np.log2(n_obs)))),
        random_state=random_state,
    )
