"""Peer baselines run on the same folds as scRobust (as in shared/data/BASELINES.md)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc


def _log_normalized(adata: ad.AnnData, layer: str | None) -> ad.AnnData:
    out = ad.AnnData(
        X=(adata.X if layer is None else adata.layers[layer]).copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy()
    )
    out.X = out.X.astype(np.float32)
    if not adata.uns.get("X_is_log_normalized", False) and _is_counts(out.X):
        sc.pp.normalize_total(out, target_sum=1e4)
        sc.pp.log1p(out)
    return out


def _is_counts(x) -> bool:
    data = x.data if hasattr(x, "data") else np.asarray(x).ravel()
    data = data[:1_000_000]
    return bool(np.all(np.mod(data, 1) == 0))


def hvg_features(train: ad.AnnData, test: ad.AnnData, *, n_top_genes: int = 2000, layer: str | None = None):
    """Log-normalised expression of the training fold's top HVGs (scanpy, flavor seurat).

    Examples
    --------
    >>> xtr, xte = hvg_features(train, test)  # doctest: +SKIP
    """
    tr, te = _log_normalized(train, layer), _log_normalized(test, layer)
    sc.pp.highly_variable_genes(tr, n_top_genes=min(n_top_genes, tr.n_vars - 1), flavor="seurat")
    genes = tr.var_names[tr.var["highly_variable"].to_numpy()]
    return tr[:, genes].X, te[:, te.var_names.get_indexer(genes)].X


def logistic_regression_baseline(
    train: ad.AnnData, test: ad.AnnData, labels_key: str, *, layer: str | None = None, seed: int = 0
) -> np.ndarray:
    """Logistic regression on scaled log-normalised HVGs; returns test predictions.

    The labels of :func:`~scrobust_sc.benchmark.logreg_method`.

    Examples
    --------
    >>> pred = logistic_regression_baseline(train, test, "cell_type")  # doctest: +SKIP
    """
    from ._methods import logreg_method

    return logreg_method(train, test, labels_key, seed=seed, layer=layer).labels


def knn_pca_baseline(train: ad.AnnData, test: ad.AnnData, labels_key: str, *, layer: str | None = None) -> np.ndarray:
    """KNN (k=15) on 50 PCs of scaled, clipped HVGs fit on the training fold.

    The labels of :func:`~scrobust_sc.benchmark.knn_method`.

    Examples
    --------
    >>> pred = knn_pca_baseline(train, test, "cell_type")  # doctest: +SKIP
    """
    from ._methods import knn_method

    return knn_method(train, test, labels_key, layer=layer).labels


def majority_baseline(train: ad.AnnData, test: ad.AnnData, labels_key: str) -> np.ndarray:
    """Predict the most frequent training label for every test cell.

    Examples
    --------
    >>> pred = majority_baseline(train, test, "cell_type")  # doctest: +SKIP
    """
    labels = train.obs[labels_key].astype(str)
    return np.full(test.n_obs, labels.value_counts().index[0], dtype=object)
